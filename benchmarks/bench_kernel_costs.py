"""Runtime-aware precision on a MobileNetV2-style CNN in ONNX Runtime: per-kernel int8/fp32 ratios and whole models.

1. Every distinct conv/linear kernel of the model (batch ``--batch``, 224x224 images) is timed in its float and int8
   forms by ``Runtime.time_kernel`` (the one-op graphs of ``mixq.export.onnx.kernel_timing``), into a fresh cache;
   mixq static with ``runtime="ort"`` keeps float the layers whose int8 kernel was slower.
2. The kernels of the layers left int8 are timed again (a second, independent measurement) to count any int8 layer
   that is slower than fp32 after all (noise, or a wrong decision).
3. Whole models at batch ``--batch``, side by side in interleaved rounds in one process: ORT fp32, mixq static with
   runtime-aware precision, mixq static all-int8 (``runtime_aware=False``), ORT ``quantize_static`` (QDQ, U8/S8
   per-channel, MinMax, same calibration batches), mixq dynamic with runtime-aware precision and all-int8 (the
   ConvInteger file); cosine similarity of each output to fp32.

Writes ``kernel_costs.json`` and ``kernel_costs.md`` (rendered from the JSON) under ``--out``. Prints the CPU flags
and the load average: on a shared machine the ratios are noisy, and the report says so.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_kernel_costs.py            # about 5 minutes on 2 cores
    PYTHONPATH=src .venv/bin/python benchmarks/bench_kernel_costs.py --quick    # smoke test: 96x96, few rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mobilenet_model import make_mobilenet  # noqa: E402

import mixq  # noqa: E402
from mixq.export.backend import get_runtime  # noqa: E402
from mixq.quant.cpu import cpu_flags  # noqa: E402
from mixq.quant.runtime_costs import KernelCosts  # noqa: E402
from mixq.quant.runtime_precision import int8_slower, layer_kernels  # noqa: E402
from mixq.quant.stages import prepare  # noqa: E402

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (kernels and whole models)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds of the whole models")
    p.add_argument("--quick", action="store_true", help="96x96 images, 3 rounds")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.image, args.rounds = 96, 3
    return args


def kernel_table(model: torch.nn.Module, calib: list[torch.Tensor], threads: int) -> tuple[list[dict], Any]:
    """Each distinct kernel of ``model`` (static mode at the calibration shape) timed twice: the decision and a
    second, independent check."""
    runtime = get_runtime("ort")
    config = mixq.make_config("static", runtime="ort")
    kernels = layer_kernels(prepare(model, config, calib[0]), config)
    costs = KernelCosts.cached("ort", runtime.version(), threads)
    costs.measure(kernels.values(), lambda k: runtime.time_kernel(k, threads), budget_s=1e9)
    rows, again = {}, {}
    for name, kernel in kernels.items():
        if kernel.key not in rows:
            cost = costs.get(kernel)
            check = runtime.time_kernel(kernel, threads)
            again[kernel.key] = check
            rows[kernel.key] = {"kernel": kernel.describe(), "key": kernel.key, "layers": [], "float_ms": cost.float_ms,
                                "int8_ms": cost.int8_ms, "ratio": cost.ratio, "int8": not int8_slower(cost),
                                "check_ratio": check.ratio, "check_slower": int8_slower(check)}
        rows[kernel.key]["layers"].append(name)
    return list(rows.values()), costs


def ort_static(fp32: Path, out: Path, calib: list[torch.Tensor], name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: b.numpy()} for b in calib])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(fp32, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)


def whole_models(model: torch.nn.Module, calib: list[torch.Tensor], x: torch.Tensor, args: argparse.Namespace,
                 tmp: Path) -> dict[str, dict[str, Any]]:
    """Each variant's file, timed side by side (interleaved rounds), with its output's cosine to fp32."""
    rt = get_runtime("ort")
    models = {
        "mixq static, runtime-aware": mixq.quantize(model, "static", calib_data=calib, progress=False, runtime="ort"),
        "mixq static, all int8": mixq.quantize(model, "static", calib_data=calib, progress=False),
        "mixq dynamic, runtime-aware": mixq.quantize(model, "dynamic", example_inputs=calib[0], runtime="ort"),
        "mixq dynamic, all int8 (ConvInteger)": mixq.quantize(model, "dynamic"),
    }
    files = {"ORT fp32": mixq.export_onnx(model, x, tmp / "fp32.onnx")}
    files |= {name: mixq.export_onnx(m, x, tmp / f"v{i}.onnx") for i, m in enumerate(models.values())
              for name in [list(models)[i]]}
    input_name = rt.input_names(rt.session(files["ORT fp32"]))[0]
    files["ORT quantize_static"] = tmp / "ort_static.onnx"
    ort_static(files["ORT fp32"], files["ORT quantize_static"], calib, input_name)
    order = ["ORT fp32", "mixq static, runtime-aware", "mixq static, all int8", "ORT quantize_static",
             "mixq dynamic, runtime-aware", "mixq dynamic, all int8 (ConvInteger)"]
    sessions = {k: rt.session(files[k], args.threads) for k in order}
    feeds = {input_name: x.numpy()}
    outputs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}  # also the warm-up
    times: dict[str, list[float]] = {k: [] for k in order}
    for r in range(args.rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            tick = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - tick) * 1e3)
    ref = outputs["ORT fp32"].ravel().astype(np.float64)
    result = {}
    for k in order:
        out = outputs[k].ravel().astype(np.float64)
        quantized = len(models[k].mixq_summary.quantized) if k in models else None
        result[k] = {"median_ms": statistics.median(times[k]), "min_ms": min(times[k]), "times_ms": times[k],
                     "vs_fp32": statistics.median(times[k]) / statistics.median(times["ORT fp32"]),
                     "min_vs_fp32": min(times[k]) / min(times["ORT fp32"]),
                     "cos_to_fp32": float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))),
                     "layers_int8": quantized, "file_bytes": Path(files[k]).stat().st_size}
    return result


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    lines = [f"# Runtime-aware precision: MobileNetV2-style CNN in ONNX Runtime (batch {data['batch']}, "
             f"{data['image']}x{data['image']})", "",
             f"ONNX Runtime {env['onnxruntime']}, {env['threads']} thread(s); CPU flags: {', '.join(env['flags'])}; "
             f"load average {env['load_start']:.2f} at start, {env['load_end']:.2f} at end (2 cores shared with "
             "other sessions: ratios are noisy). Command: `" + data["command"] + "`.", "",
             "## Per kernel (fastest-round int8 time / fp32 time, one-op files; a layer stays float when above 1)", "",
             "| kernel | layers | fp32 ms | int8 ms | int8/fp32 | exported | re-measured int8/fp32 |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in data["kernels"]:
        lines.append(f"| {r['kernel']} | {len(r['layers'])} | {r['float_ms']:.3f} | {r['int8_ms']:.3f} | "
                     f"{r['ratio']:.2f} | {'int8' if r['int8'] else 'float'} | {r['check_ratio']:.2f} |")
    s = data["summary"]
    lines += ["", f"Int8 kernels: {s['int8_kernels']} of {len(data['kernels'])}; of those, slower than fp32 when "
              f"measured again: {s['int8_slower_on_recheck']}.", "",
              f"## Whole model (batch {data['batch']}, {data['rounds']} interleaved rounds: median, and the fastest "
              "round, which load from other processes disturbs least)", "",
              "| file | median ms | vs ORT fp32 | fastest ms | vs ORT fp32 | int8 layers | cos to fp32 | size MB |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k, v in data["models"].items():
        layers = "" if v["layers_int8"] is None else v["layers_int8"]
        lines.append(f"| {k} | {v['median_ms']:.1f} | {v['vs_fp32']:.2f}x | {v['min_ms']:.1f} | "
                     f"{v['min_vs_fp32']:.2f}x | {layers} | {v['cos_to_fp32']:.4f} | {v['file_bytes'] / 1e6:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    flags = sorted(f for f in FLAGS if f in cpu_flags())
    print(f"CPU flags: {', '.join(flags)}; load average {load_start:.2f}", flush=True)
    model = make_mobilenet(args.image)
    g = torch.Generator().manual_seed(7)
    calib = [torch.randn(args.batch, 3, args.image, args.image, generator=g) for _ in range(4)]
    x = torch.randn(args.batch, 3, args.image, args.image, generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp  # a fresh cache: every kernel is timed in this run
        kernels, _ = kernel_table(model, calib, args.threads)
        print(f"timed {len(kernels)} kernels", flush=True)
        models = whole_models(model, calib, x, args, Path(tmp))
    import onnxruntime

    command = " ".join(["benchmarks/bench_kernel_costs.py", *(argv or sys.argv[1:])])
    data = {"batch": args.batch, "image": args.image, "rounds": args.rounds, "command": command,
            "environment": {"onnxruntime": onnxruntime.__version__, "threads": args.threads, "flags": flags,
                            "load_start": load_start, "load_end": os.getloadavg()[0]},
            "kernels": kernels, "models": models,
            "summary": {"int8_kernels": sum(r["int8"] for r in kernels),
                        "int8_slower_on_recheck": sum(r["int8"] and r["check_slower"] for r in kernels)}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "kernel_costs_quick" if args.quick else "kernel_costs"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (args.out / f"{stem}.md").write_text(render(data))
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
