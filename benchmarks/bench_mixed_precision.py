"""Benchmark MixedPrecision against fp32 and hand-written ``torch.amp`` loops: step time, peak memory, loss curves.

Usage::

    .venv/bin/python benchmarks/bench_mixed_precision.py            # ~6 min on 2 idle CPU cores; JSON + Markdown
    .venv/bin/python benchmarks/bench_mixed_precision.py --quick    # a smoke test (results not written)

Step time: a MiniLM-sized BERT (random init, 6 layers, hidden 384, 12 heads, batch 16 x seq 128 as in issue 22)
and a small CNN are trained with every recipe in one process; each round runs every recipe once (the order rotates
per round) so drift in machine load hits all of them alike. Reported: the median step time, its ratio to fp32, and
for each ``MixedPrecision`` recipe the median of its per-round ratios to the hand-written loop of the same precision
and scaling (``torch.autocast`` + ``torch.amp.GradScaler`` as in the PyTorch AMP recipe; MixedPrecision keeps its
non-finite-step check on in every mode). Every recipe, fp32 included, uses the same optimizer: the BERT is timed
with PyTorch's default AdamW (on CPU a Python loop over the parameters) and with ``AdamW(fused=True)`` (one kernel),
since the optimizer's share of a step decides how much a faster forward/backward can show. On CPU, fp16 is timed on
a small MLP only (CPUs compute fp16 in software).

Peak memory: each BERT recipe runs in a fresh subprocess (peak RSS never goes down): ``ru_maxrss`` on CPU or
``torch.cuda.max_memory_allocated`` on GPU, above the footprint before the model was built.

Loss curves: a small character-level transformer LM trained on the standard library's own source with each recipe
(every precision and scaling mode) from the same initialisation and batches; the final held-out loss is compared
with fp32's, and with fp32 on another batch order (the run-to-run noise).

The CPU flags that decide bf16 speed (``avx512_bf16``, ``amx_bf16``) and the load average are printed and stored.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.amp import MixedPrecision
from mixq.quant.cpu import cpu_flags

RESULTS = Path(__file__).parent / "results"
FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")
# name -> (hand-written baseline or None, how to build the step): ("fp32"|"hand"|"mixq", options)
RECIPES: dict[str, tuple[str, dict]] = {
    "fp32": ("fp32", {}),
    "autocast bf16 (hand-written)": ("hand", {"dtype": "bf16"}),
    "mixq bf16": ("mixq", {"precision": "bf16"}),
    "mixq bf16 weights + fp32 masters": ("mixq", {"precision": "bf16", "master_weights": True}),
    "autocast fp16 + GradScaler (hand-written)": ("hand", {"dtype": "fp16", "scaler": "dynamic"}),
    "mixq fp16 dynamic": ("mixq", {"precision": "fp16"}),
    "autocast fp16 + static scale (hand-written)": ("hand", {"dtype": "fp16", "scaler": "static"}),
    "mixq fp16 static": ("mixq", {"precision": "fp16", "loss_scale": 1024.0}),
    "autocast fp16, no scaling (hand-written)": ("hand", {"dtype": "fp16"}),
    "mixq fp16 no scaling": ("mixq", {"precision": "fp16", "loss_scale": "none"}),
}
BASELINE = {  # MixedPrecision recipe -> the hand-written loop it replaces
    "mixq bf16": "autocast bf16 (hand-written)",
    "mixq bf16 weights + fp32 masters": "autocast bf16 (hand-written)",
    "mixq fp16 dynamic": "autocast fp16 + GradScaler (hand-written)",
    "mixq fp16 static": "autocast fp16 + static scale (hand-written)",
    "mixq fp16 no scaling": "autocast fp16, no scaling (hand-written)",
}
BF16 = [r for r in RECIPES if "fp16" not in r]
FP16 = ["fp32"] + [r for r in RECIPES if "fp16" in r]
CURVE_RECIPES = ["fp32", "mixq bf16", "mixq bf16 weights + fp32 masters", "mixq fp16 dynamic", "mixq fp16 static",
                 "mixq fp16 no scaling"]
OPTIMIZERS = {  # --optimizer: how every recipe (fp32 included) builds its AdamW
    "adamw": {},  # PyTorch's default: on CPU a Python loop over the parameters
    "adamw-fused": {"fused": True},  # one fused kernel over all parameters (CPU and CUDA)
}
NOISE = "fp32 (other batch order)"


def bert(seq: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                        max_position_embeddings=max(512, seq), num_labels=2)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).train()


def cnn(channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(128, classes),
    )  # fmt: skip


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.LayerNorm(512), nn.GELU(),
                         nn.Linear(512, 10))


MODELS = {"bert": bert, "cnn": lambda seq: cnn(3), "mlp": lambda seq: mlp()}


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    if x.dtype == torch.long:  # token ids: the HF model computes its own loss
        return model(input_ids=x, labels=y).loss
    return nn.functional.cross_entropy(model(x).float(), y)


def make_step(recipe: str, model: nn.Module, device: str, lr: float = 1e-4, return_optimizer: bool = False,
              optimizer: str = "adamw", loss: Any = None) -> Any:
    """One training step of ``recipe`` on ``model`` (returns the loss as a float); with ``return_optimizer``,
    ``(step, optimizer)`` so a learning-rate schedule can drive it. ``optimizer`` names an ``OPTIMIZERS`` entry,
    ``loss`` replaces ``loss_fn``."""
    kind, opts = RECIPES[recipe]
    loss_fn_ = loss or loss_fn
    opt = torch.optim.AdamW(model.parameters(), lr=lr, **OPTIMIZERS[optimizer])
    if kind == "mixq":
        mp = MixedPrecision(model, opt, **opts)

        def mixq_step(batch: tuple) -> float:
            with mp.autocast():
                value = loss_fn_(model, batch)
            mp.backward(value)
            mp.step()
            mp.zero_grad()
            return value.item()

        return (mixq_step, opt) if return_optimizer else mixq_step
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.get("dtype", ""), torch.float32)
    scaler = torch.amp.GradScaler(device, enabled="scaler" in opts,
                                  **({"init_scale": 1024.0, "growth_interval": 2**30}
                                     if opts.get("scaler") == "static" else {}))

    def hand_step(batch: tuple) -> float:  # the PyTorch AMP recipe (fp32: autocast and scaler are no-ops)
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            value = loss_fn_(model, batch)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        return value.item()

    return (hand_step, opt) if return_optimizer else hand_step


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batches(name: str, device: str, batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "bert":
        x, y = torch.randint(0, 30522, (batch, seq), generator=g), torch.randint(0, 2, (batch,), generator=g)
    elif name == "cnn":
        x, y = torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    else:
        x, y = torch.randn(batch, 256, generator=g), torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def step_times(name: str, recipes: list[str], device: str, rounds: int, batch: int, seq: int,
               optimizer: str = "adamw") -> dict:
    """Interleaved rounds; median ms per recipe, ratio to fp32 and paired ratio to the hand-written loop."""
    print(f"timing {name} ({optimizer}): {len(recipes)} recipes x {rounds} rounds", file=sys.stderr, flush=True)
    data = batches(name, device, batch, seq)
    steps = {r: make_step(r, MODELS[name](seq).to(device), device, optimizer=optimizer) for r in recipes}
    for fn in steps.values():  # warm-up (allocator, oneDNN primitives, optimizer state)
        fn(data), fn(data)
    times: dict[str, list[float]] = {r: [] for r in recipes}
    for i in range(rounds):
        order = recipes[i % len(recipes):] + recipes[: i % len(recipes)]
        for r in order:
            _sync(device)
            t0 = time.perf_counter()
            steps[r](data)
            _sync(device)
            times[r].append(time.perf_counter() - t0)
    fp32 = statistics.median(times["fp32"])
    out = {}
    for r in recipes:
        row = {"ms": 1e3 * statistics.median(times[r]), "vs_fp32": statistics.median(times[r]) / fp32}
        if r in BASELINE and BASELINE[r] in times:
            row["vs_hand_written"] = statistics.median(
                a / b for a, b in zip(times[r], times[BASELINE[r]], strict=True))
        out[r] = row
    return {"batch": batch, "seq": seq if name == "bert" else None, "rounds": rounds, "optimizer": optimizer,
            "recipes": out, "loadavg_after": os.getloadavg()}


def _vm_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(recipe: str, device: str, batch: int, seq: int) -> dict[str, float]:
    """Run one BERT recipe (in a fresh subprocess) for a few steps: peak memory in MiB while training.

    On Linux the peak RSS is reset (``/proc/self/clear_refs``) once the libraries are imported, so the import's own
    peak does not hide the training's; the model, optimizer state, gradients and activations are all counted.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    base_kib = _vm_kib("VmRSS")
    model = bert(seq).to(device)
    step = make_step(recipe, model, device)
    data = batches("bert", device, batch, seq)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step(data)
    if device == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mib": (_vm_kib("VmHWM") - base_kib) / 1024}


def memory(recipes: list[str], device: str, batch: int, seq: int) -> dict[str, dict[str, float]]:
    out = {}
    for recipe in recipes:
        print(f"peak memory: {recipe}", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--memory-child", recipe, "--device", device, "--batch", str(batch),
               "--seq", str(seq)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory run {recipe!r} failed:\n{proc.stderr}")
        out[recipe] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


CORPUS_PACKAGES = ("json", "html", "urllib")  # the standard library's own source: on every machine, no download
LM_SEQ, LM_VOCAB = 64, 128  # ASCII characters


class CharLM(nn.Module):
    """A small pre-norm causal transformer over ASCII characters (2 layers, width 128): LayerNorms, GELU MLPs,
    attention and an embedding, the parts of the BERT timed above."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(LM_VOCAB, 128)
        self.position = nn.Parameter(torch.randn(LM_SEQ, 128) * 0.02)
        layer = nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(128)
        self.head = nn.Linear(128, LM_VOCAB)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(LM_SEQ), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(tokens) + self.position, mask=self.causal, is_causal=True)
        return self.head(self.norm(h))


def corpus() -> torch.Tensor:
    """ASCII bytes of a few standard-library packages' ``*.py`` files, in a fixed order."""
    import importlib

    files = sorted(f for name in CORPUS_PACKAGES
                   for f in Path(importlib.import_module(name).__file__).parent.glob("*.py"))
    text = b"".join(f.read_bytes() for f in files)
    return torch.tensor([c for c in text if c < LM_VOCAB], dtype=torch.long)


def windows(data: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-character targets: inputs ``data[s:s+LM_SEQ]``, targets shifted by one."""
    offsets = torch.arange(LM_SEQ)
    return data[starts[:, None] + offsets], data[starts[:, None] + offsets + 1]


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x).float().reshape(-1, LM_VOCAB), y.reshape(-1))


def loss_curves(recipes: list[str], device: str, steps: int, every: int = 50, optimizer: str = "adamw") -> dict:
    """Train the character LM with each recipe (same init and batches; AdamW with a cosine decay to zero, so the
    final loss is a converged one rather than a point on a noisy curve); held-out loss along the way.

    The held-out loss of a language model stays far from zero (here about 2 nats a character), so run-to-run
    noise is small next to it: ``fp32 (other batch order)``, fp32 again with another sampling seed, shows how
    small, and the other recipes' gaps are read against it. (A CNN on digits, used before, reaches ~0.02, where
    one test image more or less misclassified moved the loss by 10-30% between batch orders.)"""
    data = corpus()
    split = int(0.9 * len(data))
    train, held_out = data[:split], data[split:]
    starts = torch.randint(0, len(held_out) - LM_SEQ - 1, (256,), generator=torch.Generator().manual_seed(123))
    x_te, y_te = (t.to(device) for t in windows(held_out, starts))
    out = {}
    for recipe in [*recipes, NOISE]:
        print(f"fine-tune: {recipe}", file=sys.stderr, flush=True)
        model = CharLM().to(device)
        step, opt = make_step(recipe if recipe != NOISE else "fp32", model, device, lr=3e-3,
                              return_optimizer=True, optimizer=optimizer, loss=lm_loss)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        g, curve = torch.Generator().manual_seed(1 if recipe == NOISE else 0), []
        for i in range(1, steps + 1):
            step(tuple(t.to(device) for t in windows(train, torch.randint(0, split - LM_SEQ - 1, (32,), generator=g))))
            schedule.step()
            if i % every == 0 or i == steps:
                model.eval()
                with torch.no_grad():  # fp32 arithmetic on the weights the model computes with
                    curve.append((i, lm_loss(copy.deepcopy(model).float(), (x_te, y_te)).item()))
                model.train()
        out[recipe] = {"curve": curve, "final_loss": curve[-1][1]}
    for r in out.values():
        r["vs_fp32"] = r["final_loss"] / out["fp32"]["final_loss"]
    return out


def markdown(result: dict) -> str:
    lines = [
        f"Device: {result['device']} ({result['cpu']}), torch {result['torch']}, {result['threads']} threads. "
        f"CPU flags: {', '.join(result['cpu_flags']) or 'none of ' + ', '.join(FLAGS)}. "
        f"Load average before/after: {result['loadavg_before'][0]:.1f} / {result['loadavg_after'][0]:.1f}.",
        "",
    ]
    for name, r in result["step_time"].items():
        shape = f"batch {r['batch']}" + (f" x seq {r['seq']}" if r["seq"] else "")
        optimizer = "fused AdamW" if r.get("optimizer") == "adamw-fused" else "AdamW"
        lines += [f"**{name}** ({shape}, {optimizer}, {r['rounds']} interleaved rounds, medians)", "",
                  "| recipe | ms/step | steps/s | vs fp32 | vs its hand-written loop (paired) |",
                  "|---|---:|---:|---:|---:|"]
        for recipe, row in r["recipes"].items():
            hand = f"{row['vs_hand_written']:.3f}x" if "vs_hand_written" in row else ""
            lines.append(f"| {recipe} | {row['ms']:.0f} | {1e3 / row['ms']:.2f} | {row['vs_fp32']:.2f}x | {hand} |")
        lines.append("")
    unit = "peak RSS above start" if result["device"] == "cpu" else "max_memory_allocated"
    fp32 = result["memory"]["fp32"]["peak_mib"]
    lines += [f"**Peak memory**, BERT ({unit})", "", "| recipe | MiB | vs fp32 |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['peak_mib']:.0f} | {v['peak_mib'] / fp32:.2f}x |" for k, v in result["memory"].items()]
    for title, curves in result["loss_curves"].items():
        steps = curves["fp32"]["curve"][-1][0]
        lines += ["", f"**Fine-tune: {title}** ({steps} AdamW steps, cosine decay to 0, held-out cross-entropy; "
                  "the last row is fp32 with another batch order: the run-to-run noise)", "",
                  "| recipe | " + " | ".join(f"step {s}" for s, _ in curves["fp32"]["curve"]) + " | final vs fp32 |",
                  "|---|" + "---:|" * (len(curves["fp32"]["curve"]) + 1)]
        for recipe, c in curves.items():
            lines.append(f"| {recipe} | " + " | ".join(f"{v:.4f}" for _, v in c["curve"])
                         + f" | {c['vs_fp32']:.3f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds for BERT (CNN 3x, MLP 5x)")
    parser.add_argument("--batch", type=int, default=16, help="BERT batch size")
    parser.add_argument("--optimizers", default="adamw,adamw-fused",
                        help=f"comma list of {', '.join(OPTIMIZERS)}: the BERT is timed with each; the CNN, the "
                             "MLP and the fine-tune use the first")
    parser.add_argument("--seq", type=int, default=128, help="BERT sequence length")
    parser.add_argument("--curve-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test; writes nothing")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "mixed_precision.json")
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, args.device, args.batch, args.seq)))
        return 0
    optimizers = args.optimizers.split(",")
    if unknown := [o for o in optimizers if o not in OPTIMIZERS]:
        parser.error(f"--optimizers: unknown {', '.join(unknown)}; choose from {', '.join(OPTIMIZERS)}")
    if args.quick:
        args.rounds, args.batch, args.seq, args.curve_steps = 2, 2, 32, 20
    elif not args.out.parent.is_dir():  # refuse before minutes of timing, not after
        parser.error(f"--out: directory {str(args.out.parent)!r} does not exist; create it first")
    flags = sorted(set(FLAGS) & cpu_flags())
    result = {"device": args.device, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu_flags": flags, "loadavg_before": os.getloadavg()}
    print(f"CPU flags: {flags}; load average {result['loadavg_before']}", flush=True)
    # CPUs compute fp16 in software (convolutions very slowly): there fp16 is timed on a small MLP only
    cuda = args.device == "cuda"
    first = optimizers[0]
    result["step_time"] = {
        f"MiniLM-sized BERT, {opt}": step_times("bert", list(RECIPES) if cuda else BF16, args.device, args.rounds,
                                                args.batch, args.seq, opt) for opt in optimizers}
    result["step_time"]["CNN (3x32x32)"] = step_times("cnn", list(RECIPES) if cuda else BF16, args.device,
                                                      3 * args.rounds, 32, 0, first)
    if not cuda:
        result["step_time"]["MLP, fp16 modes"] = step_times("mlp", FP16, args.device, 5 * args.rounds, 128, 0, first)
    result["memory"] = memory(BF16, args.device, args.batch, args.seq)
    result["loss_curves"] = {"character LM on Python source": loss_curves(CURVE_RECIPES, args.device,
                                                                          args.curve_steps, optimizer=first)}
    result["loadavg_after"] = os.getloadavg()
    if not args.quick:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    print(text)
    if not args.quick:
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
