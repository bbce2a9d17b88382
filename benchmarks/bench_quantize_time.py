"""How long quantizing takes: ``mixq.quantize`` (static defaults) vs ONNX Runtime's ``quantize_static`` on the
ImageNet-pretrained EfficientNet-Lite0 of ``bench_pretrained_cnn.py``, with its calibration crops (batches of 8).

Each measurement runs in a fresh subprocess, so the first call pays what a user's first call pays after importing
the package (mixq: importing and warming up ``torch.export``, which it imports lazily; ORT: its session and
calibration set-up); a second call in the same process is timed too ("warm"). Jobs alternate (mixq, ORT, mixq,
...) for ``--rounds`` rounds, so load drifts hit every job alike; medians are printed, and minimums (on a shared
machine, the run least slowed by others). ``--compare SRC`` adds another mixq source tree (e.g. a checkout of
main's ``src``) to the rotation, so a change is timed against its baseline in the same run. ORT quantizes the fp32
ONNX file that ``bench_pretrained_cnn.export_fp32`` writes (exported once, not timed), with its calibration session
on ``--threads`` threads, as PyTorch runs on.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_quantize_time.py [--threads 1] [--rounds 3]`` (about 20 s
per job on 2 loaded cores). Prints the CPU flags, load average and a Markdown table; ``--out FILE`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def _calibration(per_image: int) -> tuple[object, list]:
    sys.path.insert(0, str(HERE))
    import bench_pretrained_cnn as cnn

    model, images = cnn.load_model(), cnn.photos()
    return model, list(cnn.crops(images, per_image, seed=1).split(8))


def job(who: str, threads: int, per_image: int, fp32: Path) -> dict[str, float]:
    """Time two calls of one quantizer in this (fresh) process: ``{"first": s, "warm": s}``."""
    import torch

    torch.set_num_threads(threads)
    model, calib = _calibration(per_image)
    with torch.no_grad():
        model(calib[0])  # the float model has run once, as before any quantizer in bench_pretrained_cnn
    if who == "ort":
        quantize = _ort_quantizer(fp32, calib, threads)
    else:
        import mixq

        def quantize() -> object:
            return mixq.quantize(model, "static", calib_data=calib, progress=False)

    times = []
    for _ in range(2):
        start = time.perf_counter()
        quantize()
        times.append(time.perf_counter() - start)
    return {"first": times[0], "warm": times[1]}


def _ort_quantizer(fp32: Path, calib: list, threads: int) -> object:
    import bench_pretrained_cnn as cnn
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate

    class Options(ort.SessionOptions):  # the calibration session, on as many threads as PyTorch
        def __init__(self) -> None:
            super().__init__()
            self.intra_op_num_threads = threads

    calibrate.onnxruntime.SessionOptions = Options
    cnn.THREADS = threads
    out = fp32.with_name(f"ort_{os.getpid()}.onnx")
    return lambda: cnn.ort_quantize_static(fp32, calib, out)


def _export_fp32(per_image: int, folder: Path) -> Path:
    import bench_pretrained_cnn as cnn

    model, calib = _calibration(per_image)
    return cnn.export_fp32(model, calib[0][:1], folder / "fp32.onnx")


def _run(who: str, src: str, args: argparse.Namespace, fp32: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, str(HERE)]), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--job", who, "--threads", str(args.threads), "--calib-per-image",
           str(args.calib_per_image), "--fp32", str(fp32)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{who} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="PyTorch and ORT threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--calib-per-image", type=int, default=4, help="calibration crops per photo (default 4: "
                        "32 crops, as bench_pretrained_cnn)")
    parser.add_argument("--compare", action="append", default=[], metavar="SRC",
                        help="another mixq source tree to time in the same rotation (repeatable)")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--fp32", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(job(args.job, args.threads, args.calib_per_image, args.fp32)))  # noqa: T201
        return 0
    import mixq
    from mixq.quant.cpu import cpu_flags

    flags = sorted(cpu_flags() & set(FLAGS))
    load_before = os.getloadavg()[0]
    print(f"CPU flags: {flags}; load average {load_before:.2f}; {args.threads} threads")  # noqa: T201
    jobs = {"mixq": str(Path(mixq.__file__).parents[1]), **{f"mixq ({src})": src for src in args.compare},
            "ORT quantize_static": str(Path(mixq.__file__).parents[1])}
    times: dict[str, list[dict[str, float]]] = {label: [] for label in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = _export_fp32(args.calib_per_image, Path(tmp))
        for _ in range(args.rounds):
            for label, src in jobs.items():
                times[label].append(_run("ort" if label.startswith("ORT") else "mixq", src, args, fp32))
    load_after = os.getloadavg()[0]
    lines = [f"| quantizer ({args.threads} threads) | first call s: median (min) | warm call s: median (min) | "
             "first calls |", "|---|---:|---:|---|"]
    for label, runs in times.items():
        first, warm = ([r[k] for r in runs] for k in ("first", "warm"))
        each = ", ".join(f"{t:.2f}" for t in first)
        lines.append(f"| {label} | {statistics.median(first):.2f} ({min(first):.2f}) | "
                     f"{statistics.median(warm):.2f} ({min(warm):.2f}) | {each} |")
    print("\n".join(lines) + f"\n\nLoad average before/after: {load_before:.2f} / {load_after:.2f}")  # noqa: T201
    if args.out:
        args.out.write_text(json.dumps({"threads": args.threads, "flags": flags, "load": [load_before, load_after],
                                        "times": times}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
