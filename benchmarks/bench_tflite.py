"""LiteRT (.tflite) files from mixq: fp32 vs full-integer vs dynamic-range vs float16, with litert-torch's own PT2E
quantizer as the peer, on the demo's residual CNN trained on scikit-learn's bundled digits.

For each file: size, test accuracy in LiteRT, agreement with the fp32 file, the Conv/FC ops XNNPACK runs, and the
median latency at batch 1 on 2 threads. Timing is interleaved: every round times each file for ``--runs`` invokes in
turn, and a file's latency is the median of all its invokes, so machine load hits every variant alike. The peer is
``litert_torch.quantize.pt2e_quantizer.PT2EQuantizer`` (symmetric per-channel int8 weights, int8 activations)
calibrated on the same batches through torchao's ``prepare_pt2e`` / ``convert_pt2e``.

Run: ``.venv/bin/python benchmarks/bench_tflite.py [--channels 64] [--rounds 10] [--runs 200]`` (a few minutes on
2 idle cores; most of it is conversion). At the demo's 8x8 inputs an invoke is ~50 us, mostly call overhead, so
compute speedups show with ``--image-size 32 --channels 32 --epochs 4`` (digits upsampled to 32x32). Needs
``pip install 'mixq[litert]'``. Writes results/tflite.{md,json} (results/tflite_32px_32ch.* for that run).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mixq
from mixq.demo import DigitsCNN, load_digits_split, train
from mixq.export.tflite import COMPUTE_OPS

RESULTS = Path(__file__).parent / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c")


def cpu() -> dict[str, Any]:
    name, flags = platform.processor() or "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return {"cpu": name, "flags": {f: f in flags for f in CPU_FLAGS}}


def pt2e_peer(model: nn.Module, calib: list[torch.Tensor], example: torch.Tensor, path: Path) -> Path:
    """litert-torch's own flow: PT2E quantizer, calibration, convert with its quant config."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model.eval(), (example,)).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calib:
            for i in range(len(batch)):  # the exported graph has batch 1
                graph(batch[i:i + 1])
    graph = convert_pt2e(graph, fold_quantize=False)
    litert_torch.convert(graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path


def evaluate(path: Path, x: torch.Tensor, y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    logits = mixq.TFLiteRunner(path, threads=2)(x)
    info = mixq.inspect_tflite(path)
    compute = [op for op in info.ops if op.op_type in COMPUTE_OPS]
    return logits, {
        "file": path.name, "size_kb": path.stat().st_size / 1024, "accuracy": float((logits.argmax(1) == y).mean()),
        "compute_ops": len(compute), "compute_on_xnnpack": sum(op.xnnpack for op in compute),
        "compute_input_types": sorted({", ".join(op.input_types) for op in compute}),
        "op_types": dict(info.op_types.most_common()),
    }


def interleaved_latency(paths: dict[str, Path], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Median / p90 ms per invoke at batch 1 on 2 threads, timing the files in turn ``rounds`` times."""
    sessions = {name: mixq.LiteRTSession(path, threads=2) for name, path in paths.items()}
    feeds = {name: s.random_feeds(1) for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for name, s in sessions.items():  # warm-up
        for _ in range(20):
            s.run(None, feeds[name])
    for _ in range(rounds):
        for name, s in sessions.items():
            f = feeds[name]
            for _ in range(runs):
                start = time.perf_counter()
                s.run(None, f)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "invokes": len(t)}
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64, help="width of the demo CNN (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument("--runs", type=int, default=200, help="invokes per file and round (default 200)")
    parser.add_argument("--observer", default="minmax", help="mixq's static calibration observer (default minmax)")
    parser.add_argument("--image-size", type=int, default=8,
                        help="digits upsampled (bilinear) to this size; 8 is the demo's own data (default 8)")
    parser.add_argument("--epochs", type=int, default=12, help="fp32 training epochs (default 12)")
    args = parser.parse_args()
    stem = "tflite" if (args.image_size, args.channels) == (8, 64) else f"tflite_{args.image_size}px_{args.channels}ch"
    machine = cpu()
    print(f"CPU: {machine['cpu']}; flags: {machine['flags']}")  # noqa: T201
    torch.set_num_threads(2)
    data = load_digits_split()
    x, y, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"].numpy()
    if args.image_size != 8:  # the CNN is fully convolutional (global average pooling): any size trains
        x, x_test = (nn.functional.interpolate(t, size=args.image_size, mode="bilinear", align_corners=False)
                     for t in (x, x_test))
    torch.manual_seed(0)
    model = train(DigitsCNN(args.channels), x, y, epochs=args.epochs)
    calib = [x[i:i + 100] for i in range(0, 500, 100)]
    example = x_test[:1]
    models = {
        "fp32": model,
        "mixq full-integer": mixq.quantize(model, "static", calib_data=calib, observer=args.observer,
                                           progress=False),
        "mixq dynamic-range": mixq.quantize(model, "dynamic", example_inputs=x[:8]),
        "mixq float16": mixq.quantize(model, "fp16", example_inputs=x[:8]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths, seconds = {}, {}
        for name, m in models.items():
            start = time.perf_counter()
            paths[name] = mixq.export_tflite(m, example, Path(tmp) / f"{name.replace(' ', '_')}.tflite")
            seconds[name] = time.perf_counter() - start
        start = time.perf_counter()
        paths["PT2E full-integer (peer)"] = pt2e_peer(model, calib, example, Path(tmp) / "pt2e_int8.tflite")
        seconds["PT2E full-integer (peer)"] = time.perf_counter() - start
        rows, logits = {}, {}
        for name, path in paths.items():
            logits[name], rows[name] = evaluate(path, x_test, y_test)
            rows[name]["convert_s"] = seconds[name]
        with torch.no_grad():
            sim = models["mixq full-integer"](x_test).numpy()
        head = models["mixq full-integer"].fc
        diff = np.abs(logits["mixq full-integer"] - sim) / float(head.y_scale)
        latency = interleaved_latency(paths, args.rounds, args.runs)
    base = latency["fp32"]["median_ms"]
    for name, row in rows.items():
        row.update(latency[name])
        row["vs_fp32_time"] = row["median_ms"] / base
        row["vs_fp32_size"] = row["size_kb"] / rows["fp32"]["size_kb"]
        row["agreement_with_fp32"] = float((logits[name].argmax(1) == logits["fp32"].argmax(1)).mean())
    fi, peer = rows["mixq full-integer"], rows["PT2E full-integer (peer)"]
    summary = {
        "model": f"demo DigitsCNN({args.channels}) on {args.image_size}x{args.image_size} digits",
        "epochs": args.epochs, "params": sum(p.numel() for p in model.parameters()),
        "test_images": len(y_test), "batch": 1, "threads": 2, "rounds": args.rounds, "runs": args.runs,
        "observer": args.observer, "machine": machine, "torch": torch.__version__, "rows": rows,
        "full_integer_vs_simulation": {"max_steps": float(diff.max()), "within_one_step": float(np.mean(diff <= 1)),
                                       "argmax_agreement": float(np.mean(logits["mixq full-integer"].argmax(1)
                                                                         == sim.argmax(1)))},
        "targets": {"full_integer_time_le_0.25x_fp32": fi["vs_fp32_time"] <= 0.25,
                    "full_integer_accuracy_ge_peer": fi["accuracy"] >= peer["accuracy"]},
    }
    lines = [f"# LiteRT files from mixq: {summary['model']}, {summary['params']:,} parameters, batch 1, 2 threads",
             "", f"CPU: {machine['cpu']}; flags: " + ", ".join(f"{k}={'yes' if v else 'no'}"
                                                            for k, v in machine["flags"].items()),
             f"Timing: {args.rounds} interleaved rounds x {args.runs} invokes per file; medians over all invokes.",
             "", "| file | size (KB) | vs fp32 size | accuracy | agreement with fp32 | median (ms) | p90 (ms) | "
             "vs fp32 time | Conv/FC on XNNPACK | Conv/FC input types | convert (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['size_kb']:.1f} | {r['vs_fp32_size']:.2f}x | {r['accuracy']:.4f} | "
                     f"{r['agreement_with_fp32']:.2%} | {r['median_ms']:.4f} | {r['p90_ms']:.4f} | "
                     f"{r['vs_fp32_time']:.2f}x | {r['compute_on_xnnpack']}/{r['compute_ops']} | "
                     f"{'; '.join(r['compute_input_types'])} | {r['convert_s']:.1f} |")
    sim_row = summary["full_integer_vs_simulation"]
    lines += ["", f"mixq full-integer vs mixq's PyTorch simulation: max {sim_row['max_steps']:.0f} output step(s), "
              f"{sim_row['within_one_step']:.2%} of logits within one step, argmax agreement "
              f"{sim_row['argmax_agreement']:.2%}.",
              f"Targets: full-integer <= 0.25x fp32 time: {summary['targets']['full_integer_time_le_0.25x_fp32']} "
              f"({fi['vs_fp32_time']:.2f}x); accuracy >= peer: {summary['targets']['full_integer_accuracy_ge_peer']} "
              f"({fi['accuracy']:.4f} vs {peer['accuracy']:.4f})."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
