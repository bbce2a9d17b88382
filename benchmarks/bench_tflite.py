"""LiteRT (.tflite) files from mixq: fp32 vs full-integer vs dynamic-range vs float16, with litert-torch's own PT2E
quantizer as the peer, on the demo's residual CNN trained on scikit-learn's bundled digits.

For each file: size, test accuracy in LiteRT, agreement with the fp32 file, the Conv/FC ops XNNPACK runs, and the
median latency at batch 1 on 2 threads. Timing is interleaved: every round times each file for ``--runs`` invokes in
turn, and a file's latency is the median of all its invokes, so machine load hits every variant alike. The peer is
``litert_torch.quantize.pt2e_quantizer.PT2EQuantizer`` (symmetric per-channel int8 weights, int8 activations)
calibrated on the same batches through torchao's ``prepare_pt2e`` / ``convert_pt2e``.

Run: ``.venv/bin/python benchmarks/bench_tflite.py [--channels 64] [--rounds 10] [--runs 200]`` (a few minutes on
2 idle cores; most of it is conversion). At the demo's 8x8 inputs an invoke takes tens of microseconds and call
overhead can dominate (results/tflite.md, on an AMD EPYC: 1.02x), so compute speedups are measured on digits
upsampled to 32 px and a deeper net (``tflite_model.DigitsResNet``):
``--image-size 32 --channels 64 --stages 2 --blocks 1 --epochs 8``. ``--sweep 32,32,1,1 64,64,2,2 ...``
(SIZE,CHANNELS,STAGES,BLOCKS; 0 stages: the stem conv and the head) also times fp32 / full-integer / dynamic-range files
of untrained models of those shapes (timing does not depend on the weights) to show where int8 pays. Needs
``pip install 'mixq[litert]'``. Writes results/tflite.{md,json} for the defaults, else
results/tflite_<size>px_<channels>ch[_<stages>s<blocks>b].*.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tflite_model import build_model, describe, fit, upsample
from tflite_report import report
from torch import nn

import mixq
from mixq.demo import load_digits_split
from mixq.export.tflite import COMPUTE_OPS
from mixq.quant.cpu import cpu_flags
from mixq.report import measure_interleaved

RESULTS = Path(__file__).parent / "results"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c")
SWEEP_MODES = ("fp32", "full-integer", "dynamic-range")


def cpu() -> dict[str, Any]:
    name = platform.processor() or "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            name = value.strip()
            break
    flags = cpu_flags()
    return {"cpu": name, "logical_cpus": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def load() -> float:
    """The 1-minute load average: other processes on the cores slow every file alike (timing is interleaved)."""
    return os.getloadavg()[0]


def worker_threads(path: Path, threads: int) -> int | None:
    """OS threads LiteRT adds for a session of ``threads`` threads (XNNPACK's pool: ``threads - 1`` workers when
    the setting is honoured); None off Linux."""
    task = Path("/proc/self/task")
    if not task.is_dir():
        return None
    before = len(list(task.iterdir()))
    session = mixq.LiteRTSession(path, threads=threads)
    session.run(None, session.random_feeds(1))
    return len(list(task.iterdir())) - before


def macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``model`` on ``example`` (Conv2d and Linear layers)."""
    total = 0

    def count(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.weight[0].numel()  # in_channels / groups x kh x kw
            total += out.numel() * k
        else:
            total += out.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(example)
    for h in hooks:
        h.remove()
    return total


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
    # an exported GraphModule refuses .eval() and keeps training=True (litert-torch then warns "converted in
    # training mode"); it was exported from the eval model, so only the flag is stale
    torch.nn.Module.train(graph, False)
    litert_torch.convert(graph, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    return path


def evaluate(path: Path, x: torch.Tensor, y: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    runner = mixq.TFLiteRunner(path, threads=2)
    logits = runner(x)
    info = mixq.inspect_tflite(path)
    compute = [op for op in info.ops if op.op_type in COMPUTE_OPS]
    io = [np.dtype(d["dtype"]).name for d in (*runner.input_details, *runner.output_details)]
    return logits, {
        "file": path.name, "size_kb": path.stat().st_size / 1024, "accuracy": float((logits.argmax(1) == y).mean()),
        "io_types": f"{io[0]} -> {io[-1]}",
        "compute_ops": len(compute), "compute_on_xnnpack": sum(op.xnnpack for op in compute),
        "ops": len(info.ops), "ops_on_xnnpack": sum(op.xnnpack for op in info.ops),
        "compute_input_types": sorted({", ".join(op.input_types) for op in compute}),
        "op_types": dict(info.op_types.most_common()),
    }


def interleaved_latency(paths: dict[str, Path], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Median / p90 ms per invoke at batch 1 on 2 threads: 20 warm-up invokes per file, then ``rounds`` rounds that
    each time every file in turn for ``runs`` invokes (``mixq.report.measure_interleaved``)."""
    sessions = {name: mixq.LiteRTSession(path, threads=2) for name, path in paths.items()}
    jobs = {name: (s, s.random_feeds(1)) for name, s in sessions.items()}
    timed = measure_interleaved(jobs, runs=rounds * runs, warmup=20, rounds=rounds)
    out = {}
    for name, t in timed.items():
        if isinstance(t, Exception):
            raise RuntimeError(f"LiteRT failed on {paths[name].name}") from t
        out[name] = {"median_ms": t.median_ms, "p90_ms": t.p90_ms, "invokes": t.runs}
    return out


def sweep_config(text: str) -> tuple[int, int, int, int]:
    """``SIZE,CHANNELS,STAGES,BLOCKS`` from the command line."""
    try:
        size, channels, stages, blocks = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SIZE,CHANNELS,STAGES,BLOCKS (e.g. 32,64,2,1)") from None
    if min(size, channels, blocks) < 1 or stages < 0 or size % (2 ** stages):
        raise argparse.ArgumentTypeError(f"{text!r}: positive values (STAGES 0: the stem conv alone), SIZE divisible "
                                         "by 2**STAGES")
    return size, channels, stages, blocks


def sweep(configs: list[tuple[int, int, int, int]], rounds: int, runs: int, tmp: Path) -> list[dict[str, Any]]:
    """fp32 / full-integer / dynamic-range files of untrained models of each shape, all timed interleaved."""
    paths, rows = {}, []
    for size, channels, stages, blocks in configs:
        torch.manual_seed(0)
        model = build_model(channels, stages, blocks).eval()
        calib = [torch.rand(16, 1, size, size) for _ in range(2)]
        example = calib[0][:1]
        tag = f"{size}px_{channels}ch_{stages}s{blocks}b"
        variants = {"fp32": model,
                    "full-integer": mixq.quantize(model, "static", calib_data=calib, progress=False),
                    "dynamic-range": mixq.quantize(model, "dynamic", example_inputs=example)}
        for mode, m in variants.items():
            paths[(tag, mode)] = mixq.export_tflite(m, example, tmp / f"sweep_{tag}_{mode}.tflite")
        info = mixq.inspect_tflite(paths[(tag, "full-integer")])
        rows.append({"config": tag, "model": describe(channels, stages, blocks), "image_size": size,
                     "channels": channels, "stages": stages, "blocks": blocks,
                     "macs": macs(model, example), "int8_ops_on_xnnpack": f"{sum(o.xnnpack for o in info.ops)}/"
                                                                          f"{len(info.ops)}"})
    latency = interleaved_latency({f"{t} {m}": p for (t, m), p in paths.items()}, rounds, runs)
    for row in rows:
        ms = {mode: latency[f"{row['config']} {mode}"]["median_ms"] for mode in SWEEP_MODES}
        row.update({f"{mode}_ms": v for mode, v in ms.items()})
        row.update({f"{mode}_vs_fp32": v / ms["fp32"] for mode, v in ms.items() if mode != "fp32"})
        row["fp32_gmacs"] = row["macs"] / ms["fp32"] / 1e6
        row["int8_gmacs"] = row["macs"] / ms["full-integer"] / 1e6
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64, help="width of the CNN (default 64)")
    parser.add_argument("--stages", type=int, default=1,
                        help="pool + residual-block stages (default 1: the demo CNN's layers)")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds (default 10)")
    parser.add_argument("--runs", type=int, default=200, help="invokes per file and round (default 200)")
    parser.add_argument("--observer", default="minmax", help="mixq's static calibration observer (default minmax)")
    parser.add_argument("--image-size", type=int, default=8,
                        help="digits upsampled (bilinear) to this size; 8 is the demo's own data (default 8)")
    parser.add_argument("--epochs", type=int, default=12, help="fp32 training epochs (default 12)")
    parser.add_argument("--sweep", nargs="*", type=sweep_config, default=[], metavar="SIZE,CHANNELS,STAGES,BLOCKS",
                        help="also time untrained models of these shapes (fp32 vs full-integer vs dynamic-range)")
    args = parser.parse_args()
    shape = (args.image_size, args.channels, args.stages, args.blocks)
    stem = "tflite" if shape == (8, 64, 1, 1) else f"tflite_{args.image_size}px_{args.channels}ch" + (
        "" if (args.stages, args.blocks) == (1, 1) else f"_{args.stages}s{args.blocks}b")
    machine, load_start = cpu(), load()
    print(f"CPU: {machine['cpu']}; flags: {machine['flags']}; load average {load_start:.2f}")  # noqa: T201
    torch.set_num_threads(2)
    data = load_digits_split()
    x, y = upsample(data["x_train"], args.image_size), data["y_train"]
    x_test, y_test = upsample(data["x_test"], args.image_size), data["y_test"].numpy()
    torch.manual_seed(0)
    model = fit(build_model(args.channels, args.stages, args.blocks), x, y, epochs=args.epochs)
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
        workers = worker_threads(paths["mixq full-integer"], 2)
        latency = interleaved_latency(paths, args.rounds, args.runs)
        swept = sweep(args.sweep, args.rounds, args.runs, Path(tmp)) if args.sweep else []
    base = latency["fp32"]["median_ms"]
    for name, row in rows.items():
        row.update(latency[name])
        row["vs_fp32_time"] = row["median_ms"] / base
        row["vs_fp32_size"] = row["size_kb"] / rows["fp32"]["size_kb"]
        row["agreement_with_fp32"] = float((logits[name].argmax(1) == logits["fp32"].argmax(1)).mean())
    fi, peer = rows["mixq full-integer"], rows["PT2E full-integer (peer)"]
    from ai_edge_litert import __version__ as litert_version

    summary = {
        "model": f"{describe(args.channels, args.stages, args.blocks)} on {args.image_size}x{args.image_size} digits",
        "epochs": args.epochs, "params": sum(p.numel() for p in model.parameters()), "macs": macs(model, example),
        "test_images": len(y_test), "batch": 1, "threads": 2, "rounds": args.rounds, "runs": args.runs,
        "observer": args.observer, "machine": machine, "torch": torch.__version__, "litert": litert_version,
        "load_average_1m": {"start": load_start, "end": load()}, "xnnpack_worker_threads": workers, "rows": rows,
        "full_integer_vs_simulation": {"max_steps": float(diff.max()), "within_one_step": float(np.mean(diff <= 1)),
                                       "argmax_agreement": float(np.mean(logits["mixq full-integer"].argmax(1)
                                                                         == sim.argmax(1)))},
        "targets": {"full_integer_time_le_0.25x_fp32": fi["vs_fp32_time"] <= 0.25,
                    "full_integer_accuracy_ge_peer": fi["accuracy"] >= peer["accuracy"]},
        "sweep": swept,
    }
    lines = report(summary)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
