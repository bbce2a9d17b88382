"""Benchmark MixedPrecision: per-step overhead against a hand-written loop, and peak memory per recipe.

Usage::

    .venv/bin/python benchmarks/bench_mixed_precision.py            # full run, writes JSON + prints Markdown
    .venv/bin/python benchmarks/bench_mixed_precision.py --quick    # fewer steps, for a smoke test

Overhead: the same model and batches are trained with ``torch.autocast`` + ``torch.amp.GradScaler`` written by
hand and with ``mixq.amp.MixedPrecision`` (diagnostics off); steps alternate between the two so drift in
machine load hits both; the medians of the per-step times and of the paired per-step ratios are reported.

Memory: each recipe runs in a fresh subprocess (peak RSS never goes down) and reports ``ru_maxrss`` on CPU or
``torch.cuda.max_memory_allocated`` on GPU, minus the footprint measured before the model was built.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mixq.amp import MixedPrecision

RESULTS = Path(__file__).parent / "results" / "mixed_precision.json"
MEMORY_RECIPES = {
    "fp32": {"precision": "fp32"},
    "bf16 autocast": {"precision": "bf16"},
    "bf16 master weights": {"precision": "bf16", "master_weights": True},
    "fp16 master weights": {"precision": "fp16", "master_weights": True},
}


def mlp(width: int, depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(256, width), nn.GELU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def overhead(precision: str, device: str, steps: int, warmup: int) -> dict[str, float]:
    """Median per-step milliseconds of the hand-written loop and of MixedPrecision, interleaved."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    x = torch.randn(128, 256, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    ref_model, mp_model = mlp(512, 2).to(device), mlp(512, 2).to(device)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    mp = MixedPrecision(mp_model, torch.optim.AdamW(mp_model.parameters(), lr=1e-4), precision=precision)

    def ref_step() -> None:
        with torch.autocast(device, dtype=dtype):
            loss = nn.functional.cross_entropy(ref_model(x), y)
        scaler.scale(loss).backward()
        scaler.step(ref_opt)
        scaler.update()
        ref_opt.zero_grad(set_to_none=True)

    def mp_step() -> None:
        with mp.autocast():
            loss = nn.functional.cross_entropy(mp_model(x), y)
        mp.backward(loss)
        mp.step()
        mp.zero_grad()

    times: dict[str, list[float]] = {"hand-written": [], "MixedPrecision": []}
    fns = {"hand-written": ref_step, "MixedPrecision": mp_step}
    for _ in range(warmup):
        ref_step(), mp_step()
    ratios = []
    for i in range(steps):  # alternate step by step: load changes on the machine hit both variants alike
        pair = {}
        for name, fn in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            pair[name] = time.perf_counter() - t0
            times[name].append(pair[name])
        ratios.append(pair["MixedPrecision"] / pair["hand-written"])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "hand_written_ms": 1e3 * med["hand-written"],
        "mixed_precision_ms": 1e3 * med["MixedPrecision"],
        "overhead_pct": 100.0 * (med["MixedPrecision"] / med["hand-written"] - 1.0),
        "paired_overhead_pct": 100.0 * (statistics.median(ratios) - 1.0),
        "steps_each": steps,
    }


def memory_child(recipe: str, device: str, steps: int) -> dict[str, float]:
    """Run one recipe (called in a fresh subprocess) and return its peak memory in MiB."""
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = mlp(2048, 8).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mp = MixedPrecision(model, opt, **MEMORY_RECIPES[recipe])
    x, y = torch.randn(64, 256, device=device), torch.randint(0, 10, (64,), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        mp.backward(loss)
        mp.step()
        mp.zero_grad()
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20, "params_m": params / 1e6}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mib": (peak_kib - base_kib) / 1024, "params_m": params / 1e6}


def memory(device: str, steps: int) -> dict[str, dict[str, float]]:
    out = {}
    for recipe in MEMORY_RECIPES:
        cmd = [sys.executable, __file__, "--memory-child", recipe, "--device", device, "--steps", str(steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run {recipe!r} failed:\n{proc.stderr}")
        out[recipe] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Device: {result['device']} ({result['cpu']}), torch {result['torch']}",
        "",
        "| precision | hand-written autocast+GradScaler (ms/step) | MixedPrecision (ms/step) | overhead "
        "| paired overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for prec, r in result["overhead"].items():
        lines.append(
            f"| {prec} | {r['hand_written_ms']:.2f} | {r['mixed_precision_ms']:.2f} | {r['overhead_pct']:+.2f}% "
            f"| {r['paired_overhead_pct']:+.2f}% |"
        )
    unit = "peak RSS above start" if result["device"] == "cpu" else "max_memory_allocated"
    first = next(iter(result["memory"].values()))
    lines += ["", f"| recipe ({first['params_m']:.1f}M params, AdamW) | {unit} (MiB) | vs fp32 |", "|---|---:|---:|"]
    fp32 = result["memory"]["fp32"]["peak_mib"]
    for recipe, r in result["memory"].items():
        lines.append(f"| {recipe} | {r['peak_mib']:.0f} | {r['peak_mib'] / fp32:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="20 timed steps, for smoke tests")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.device, args.steps)))
        return 0
    steps = 20 if args.quick else args.steps
    result = {
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "overhead": {p: overhead(p, args.device, steps, args.warmup) for p in ("fp16", "bf16")},
        "memory": memory(args.device, steps=3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
