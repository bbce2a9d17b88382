"""Quantization-aware training vs post-training quantization on the digits CNN (scikit-learn's bundled data).

For each weight precision: fp32 accuracy, static PTQ accuracy (min-max and percentile calibration), QAT accuracy
with min-max scales and with LSQ learned scales after the same short fine-tuning, the training-step cost of QAT
relative to float training, and, for the converted QAT models, ONNX Runtime's accuracy, its agreement with the
PyTorch model in output steps and the integer kernels it runs.

The peer is torch.ao's FX-mode QAT with the same precision and schedule (``qat_torch_ao.py``), its converted
model run on PyTorch's x86 quantized engine.

Run: ``.venv/bin/python benchmarks/bench_qat.py [--channels 64]`` (15 s; 1 min at 64 channels on 2 cores). Writes
results/qat.{md,json} (results/qat_64ch.* for --channels 64).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import mixq
from mixq.demo import DigitsCNN, load_digits_split, train
from mixq.export import INTEGER_KERNELS

sys.path.insert(0, str(Path(__file__).parent))
from qat_torch_ao import torch_ao_qat  # noqa: E402

PRECISIONS = [(8, True), (4, True), (4, False), (3, True), (3, False), (2, True)]
EPOCHS = 3
RESULTS = Path(__file__).parent / "results"


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def freeze_mixq(model: nn.Module) -> None:
    mixq.freeze_observers(model)
    mixq.freeze_batchnorm(model)


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = EPOCHS,
             freeze: Callable[[nn.Module], None] | None = freeze_mixq) -> float:
    """Adam at 1e-3; the last epoch runs after ``freeze(model)`` (ranges and BatchNorm) at a tenth of the learning
    rate, the usual QAT schedule. Returns seconds per epoch."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        if epoch == epochs - 1 and epochs > 1 and freeze is not None:
            freeze(model)
            for group in opt.param_groups:
                group["lr"] = 1e-4
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return (time.perf_counter() - start) / epochs


def ort_check(qmodel: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        path = mixq.export_onnx(qmodel, x[:2], Path(tmp) / "qat.onnx")
        ops = mixq.optimized_op_types(path)
        (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = qmodel(x).numpy()
    # QAT keeps the logits float by default (no output grid): steps of a 255-level grid over the output's range
    step = float(qmodel.fc.y_scale) if qmodel.fc.y_scale is not None else float(ref.max() - ref.min()) / 255
    steps = np.abs(out - ref) / step
    return {"ort_accuracy": float((out.argmax(1) == y.numpy()).mean()), "max_diff_steps": float(steps.max()),
            "integer_kernels": {k: ops[k] for k in sorted(INTEGER_KERNELS) if ops[k]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16, help="width of the digits CNN (default 16)")
    channels = parser.parse_args().channels
    stem = "qat" if channels == 16 else f"qat_{channels}ch"
    torch.set_num_threads(2)
    data = load_digits_split()
    x, y, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    torch.manual_seed(0)
    model = train(DigitsCNN(channels), x, y, epochs=12)
    fp32 = accuracy(model, x_test, y_test)
    float_epoch = finetune(train(DigitsCNN(channels), x, y, epochs=1), x, y, epochs=1, freeze=None)
    calib = [x[i:i + 100] for i in range(0, 500, 100)]
    rows = []
    for bits, per_channel in PRECISIONS:
        row: dict[str, object] = {"bits": bits, "granularity": "per_channel" if per_channel else "per_tensor"}
        for observer in ("minmax", "percentile"):
            ptq = mixq.quantize(model, "static", calib_data=calib, bits=bits, per_channel=per_channel,
                                observer=observer, progress=False)
            row[f"ptq_{observer}"] = accuracy(ptq, x_test, y_test)
        for learnable in (False, True):
            qat = mixq.prepare_qat(model, example_inputs=x[:8], weight_bits=bits, per_channel=per_channel,
                                   learnable_scales=learnable)
            seconds = finetune(qat, x, y)
            qmodel = mixq.convert(qat)
            key = "qat_lsq" if learnable else "qat"
            row[key] = accuracy(qmodel, x_test, y_test)
            row[f"{key}_epoch_s"] = seconds
            with torch.no_grad():
                row[f"{key}_eval_equals_converted"] = bool(torch.equal(qat.eval()(x_test), qmodel(x_test)))
            if not learnable:
                row.update(ort_check(qmodel, x_test, y_test))
        row.update(torch_ao_qat(model, x, y, x_test, y_test, bits, per_channel, finetune))
        rows.append(row)
        print(row)  # noqa: T201

    lines = [f"# QAT vs PTQ on the digits CNN ({channels} channels, {EPOCHS} QAT epochs; fp32 accuracy {fp32:.4f}; "
             f"float training {float_epoch * 1e3:.0f} ms/epoch)", "",
             "| weights | PTQ min-max | PTQ percentile | QAT | QAT + LSQ | torch.ao QAT | QAT ms/epoch | "
             "LSQ ms/epoch | torch.ao ms/epoch | ORT acc (QAT) | max ORT−PyTorch (steps) | eval == converted |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['bits']}-bit {r['granularity']} | {r['ptq_minmax']:.4f} | {r['ptq_percentile']:.4f} | "
            f"{r['qat']:.4f} | {r['qat_lsq']:.4f} | {r['torch_ao_qat']:.4f} | {r['qat_epoch_s'] * 1e3:.0f} | "
            f"{r['qat_lsq_epoch_s'] * 1e3:.0f} | {r['torch_ao_epoch_s'] * 1e3:.0f} | "
            f"{r['ort_accuracy']:.4f} | {r['max_diff_steps']:.2f} | "
            f"{r['qat_eval_equals_converted'] and r['qat_lsq_eval_equals_converted']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    summary = {"channels": channels, "fp32": fp32, "float_epoch_s": float_epoch, "epochs": EPOCHS, "rows": rows}
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
