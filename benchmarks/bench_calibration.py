"""What static calibration costs per batch, as a multiple of a plain fp32 forward of the same batch.

Usage::

    .venv/bin/python benchmarks/bench_calibration.py            # ~5 min on 2 idle CPU cores; JSON + Markdown
    .venv/bin/python benchmarks/bench_calibration.py --quick    # a smoke test (results not written)

Two models with random weights: a MobileNetV2-style CNN (inverted residual blocks: 1x1 expand, 3x3 depthwise,
1x1 project, BatchNorm, ReLU6, residual adds; batch 8 x 3x128x128) and a tiny BERT encoder (2 layers, hidden 128,
batch 8 x seq 128, captured with torch.export). For each registered observer (on the BERT: minmax, which keeps a
range, and percentile, which keeps a histogram as mse and entropy do; torch.export per observer is slow) the model
is prepared once
(``mixq.quant.stages.prepare``: BatchNorm folded, layers wrapped in observers); then each round times one plain
forward of the original fp32 model and one calibration batch (``calibrate``) per observer, in rotating order, so
machine load hits every variant alike. Reported: the median per-round ratio calibration / forward, and the one-off
``prepare`` cost in forwards. The CPU flags and the load average are printed and stored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mixq.quant.calibration import call_model
from mixq.quant.cpu import cpu_flags
from mixq.quant.observers import observer_names
from mixq.quant.spec import QuantConfig
from mixq.quant.stages import calibrate, prepare

RESULTS = Path(__file__).parent / "results"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def inverted_residual(cin: int, cout: int, expand: int, stride: int) -> nn.Sequential:
    hidden = cin * expand
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
        nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
    )  # fmt: skip


class Residual(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for cout, stride in [(24, 2), (32, 2), (64, 2), (96, 1), (160, 2)]:
        layers += [inverted_residual(cin, cout, 6, stride), Residual(inverted_residual(cout, cout, 6, 1))]
        cin = cout
    layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(640, 1000)]
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in a trained model
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.bert = BertModel(BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=512, vocab_size=1000)).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def workloads(quick: bool) -> dict[str, tuple[Callable[[], nn.Module], Callable[[int], object], tuple[str, ...]]]:
    size = 64 if quick else 128

    def image(seed: int) -> torch.Tensor:
        return torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed))

    def tokens(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(0, 1000, (8, 128), generator=g),
                "attention_mask": torch.ones(8, 128, dtype=torch.int64)}

    return {f"MobileNetV2-style CNN (8x3x{size}x{size})": (mobilenet, image, observer_names()),
            # minmax keeps a range, percentile a histogram (as mse and entropy do): the two kinds of per-batch work
            "tiny BERT (2 layers, hidden 128, 8x128 tokens)": (Encoder, tokens, ("minmax", "percentile"))}


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(build: Callable[[], nn.Module], batch: Callable[[int], object], rounds: int,
            observers: tuple[str, ...]) -> dict:
    model = build()
    data = [batch(i) for i in range(4)]
    with torch.no_grad():
        forward_s = min(_timed(lambda: call_model(model, data[0])) for _ in range(2))
    prepared, prepare_s = {}, {}
    for name in observers:
        start = time.perf_counter()
        prepared[name] = prepare(model, QuantConfig.from_options("static", observer=name), data[0])
        prepare_s[name] = (time.perf_counter() - start) / forward_s
        calibrate(prepared[name], data[:2], progress=False)  # warm up

    variants: dict[str, Callable[[object], object]] = {"fp32 forward": lambda b: call_model(model, b)}
    for name, p in prepared.items():
        variants[name] = lambda b, p=p: calibrate(p, [b], progress=False)
    times: dict[str, list[float]] = {k: [] for k in variants}
    keys = list(variants)
    with torch.no_grad():
        for r in range(rounds):
            b = data[r % len(data)]
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                times[k].append(_timed(lambda k=k, b=b: variants[k](b)))
    fwd = times["fp32 forward"]
    rows = {"fp32 forward": {"median_ms": statistics.median(fwd) * 1e3, "ratio": 1.0}}
    for name in prepared:
        ratios = [c / f for c, f in zip(times[name], fwd, strict=True)]
        rows[name] = {"median_ms": statistics.median(times[name]) * 1e3, "ratio": statistics.median(ratios),
                      "prepare_in_forwards": prepare_s[name]}
    return rows


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}. CPU flags: {', '.join(result['flags']) or 'none of ' + ', '.join(FLAGS)}. "
             f"Load average before/after: {result['load'][0]:.1f} / {result['load'][1]:.1f}. "
             f"{result['rounds']} interleaved rounds, medians of per-round ratios.", ""]
    for model, rows in result["models"].items():
        lines += [f"**{model}**", "", "| variant | ms/batch | vs fp32 forward | prepare (one-off, in forwards) |",
                  "|---|---:|---:|---:|"]
        for name, row in rows.items():
            prep = f"{row['prepare_in_forwards']:.1f}" if "prepare_in_forwards" in row else ""
            label = name if name == "fp32 forward" else f"calibrate, {name}"
            lines.append(f"| {label} | {row['median_ms']:.1f} | {row['ratio']:.2f}x | {prep} |")
        lines.append("")
    lines += ["Command: `PYTHONPATH=src .venv/bin/python benchmarks/bench_calibration.py`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, few rounds, nothing written")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write calibration.{md,json}")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    load_before = os.getloadavg()[0]
    flags = sorted(cpu_flags() & set(FLAGS))
    print(f"CPU flags: {flags}; load average {load_before:.1f}; torch threads {torch.get_num_threads()}",
          file=sys.stderr)
    models = {}
    for label, (build, batch, observers) in workloads(args.quick).items():
        models[label] = measure(build, batch, rounds, observers)
        print(label, json.dumps(models[label], indent=1), file=sys.stderr)
    result = {"device": f"cpu ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads",
              "flags": flags, "load": [load_before, os.getloadavg()[0]], "rounds": rounds, "models": models}
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "calibration.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "calibration.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
