"""``run_demo``: train (fp32 and mixed precision), build every variant, measure it on ONNX Runtime, write the report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mixq.demo.context import DemoContext, DemoSettings, environment
from mixq.demo.evaluate import evaluate_variant
from mixq.demo.litert import litert_table
from mixq.demo.model import DigitsCNN, load_digits_split
from mixq.demo.sections import SECTIONS, training_table, variants_table
from mixq.demo.training import mixed_precision_choice, train_run
from mixq.demo.variants import VARIANTS
from mixq.report import write_report

TITLE = "mixq demo: a residual CNN on the bundled digits"


@dataclass(frozen=True)
class DemoOutcome:
    """Where the report went, and the tables to show on the terminal."""

    report: Path
    terminal: str


def train_models(ctx: DemoContext) -> None:
    """Train the fp32 baseline (kept as ``ctx.model``) and a mixed-precision copy from the same initial weights."""
    torch.manual_seed(ctx.settings.seed)
    init = DigitsCNN(ctx.settings.channels).state_dict()
    mixed = mixed_precision_choice() if ctx.settings.mixed_precision == "auto" else ctx.settings.mixed_precision
    for label, precision in (("fp32", "fp32"), (f"{mixed} mixed", mixed)):
        model = DigitsCNN(ctx.settings.channels)
        model.load_state_dict(init)
        model, run = train_run(model, ctx.data, precision, ctx.settings.epochs, label=label, seed=ctx.settings.seed,
                               progress=ctx.settings.progress)
        ctx.training.append(run)
        if precision == "fp32":
            ctx.model = model


def run_demo(out_dir: str | os.PathLike = "mixq-report", *, quick: bool = False, seed: int = 0, threads: int = 1,
             mixed_precision: str = "auto", progress: bool = True, runtime: str = "ort") -> DemoOutcome:
    """Run the whole demo and write ``report.md``, ``report.html``, ``report.json`` and PNG plots to ``out_dir``.

    ``out_dir`` is created if missing (its parent must exist). ``quick`` trains and times less (a smoke test).
    ``mixed_precision``: ``"auto"`` (fp16 with loss scaling on CUDA, else bf16), ``"bf16"`` or ``"fp16"``.
    ``runtime``: where the ``.onnx`` files run and are timed, any ``mixq.export.backend.get_runtime`` name for
    ``.onnx`` files (``"ort"``, ``"openvino"``, ``"openvino:f32"``).
    """
    from mixq.export.backend import runtime_for

    backend = runtime_for("model.onnx", runtime=runtime)  # ValueError in one line for another format's runtime
    if not backend.available():
        raise ValueError(f"runtime {runtime!r} needs {backend.title}, which is not installed; {backend.install_hint}")
    if mixed_precision not in ("auto", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be 'auto', 'bf16' or 'fp16', got {mixed_precision!r}")
    out = Path(out_dir)
    if not out.parent.exists():
        raise FileNotFoundError(f"the parent of the output directory, {str(out.parent)!r}, does not exist")
    out.mkdir(exist_ok=True)
    settings = DemoSettings(quick=quick, seed=seed, threads=threads, mixed_precision=mixed_precision,
                            progress=progress, runtime=runtime)
    ctx = DemoContext(out=out, settings=settings, data=load_digits_split(seed))
    train_models(ctx)
    for variant in tqdm(VARIANTS, desc="quantize, export, measure", unit="variant", leave=False, disable=not progress):
        ctx.results.append(evaluate_variant(ctx, variant))
    sections = [build(ctx) for build in SECTIONS]
    meta = {"settings": settings.to_dict(), "environment": environment(runtime)}
    report = write_report(out, TITLE, sections, meta)
    terminal = training_table(ctx).markdown() + "\n\n" + variants_table(ctx).markdown()
    if ctx.artifacts.get("litert"):
        terminal += "\n\n" + litert_table(ctx.artifacts["litert"]).markdown()
    return DemoOutcome(report, terminal)

