"""The report's sections, each one function of the demo context, listed in SECTIONS (in report order).

To add a section, write ``def my_section(ctx: DemoContext) -> Section`` (it may compute what it needs, and draw
plots into ``ctx.out``) and append it to ``SECTIONS``; Markdown, HTML and JSON output follow automatically.
"""

from __future__ import annotations

from collections.abc import Callable

from mixq.demo.context import DemoContext, environment
from mixq.demo.layer_error import layer_sensitivity
from mixq.demo.litert import litert_section
from mixq.export.onnx.inspection import format_op_counts
from mixq.report import Code, Image, Section, Table, Text, plots


def overview_section(ctx: DemoContext) -> Section:
    """Headline numbers: each variant's size and speed relative to fp32, and its accuracy change."""
    base = ctx.results[0]
    rows, data = [], {}
    for r in ctx.results[1:]:
        entry = {"size_ratio": base.size_kb / r.size_kb, "accuracy_delta_pp": r.accuracy_delta_pp}
        entry.update({f"speedup_b{b}": base.latency[b].median_ms / r.latency[b].median_ms
                      for b in ctx.settings.batches})
        data[r.variant] = entry
        rows.append([r.variant, f"{entry['size_ratio']:.2f}x"] + [f"{entry[f'speedup_b{b}']:.2f}x"
                                                                  for b in ctx.settings.batches]
                    + [f"{r.accuracy_delta_pp:+.2f}"])
    env = environment(ctx.settings.runtime)
    return Section("Overview", "overview", [
        Text(f"A residual CNN ({sum(p.numel() for p in ctx.fp32.parameters()):,} parameters) trained on "
             f"scikit-learn's bundled 8x8 digits, then quantized every way mixq can; {base.variant} "
             f"reaches {base.accuracy:.2%} test accuracy on {ctx.settings.backend.title} in a {base.size_kb:.1f} KB "
             "file. "
             f"Measured with mixq {env['mixq']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
             f"Python {env['python']} on {env['machine']} ({env['cpu_count']} CPUs)."),
        Table(["variant", "smaller than fp32"] + [f"faster at batch {b}" for b in ctx.settings.batches]
              + ["accuracy Δ (pp)"], rows, "l" + "r" * (len(ctx.settings.batches) + 2)),
    ], data=data)


def training_table(ctx: DemoContext) -> Table:
    """One row per training run: precision, time, final loss, accuracy, loss scaling."""
    rows = [[r.label, r.policy, r.device, str(len(r.losses)), f"{r.seconds:.2f}", f"{r.losses[-1]:.4f}",
             f"{r.accuracy:.4f}", str(r.skipped_steps), f"{r.scales[-1]:g}"] for r in ctx.training]
    return Table(["run", "policy (param, compute, output)", "device", "steps", "time (s)", "final loss",
                  "test accuracy", "skipped steps", "final loss scale"], rows, "lllrrrrrr")


def training_section(ctx: DemoContext) -> Section:
    """fp32 vs mixed precision training: time, loss curves, loss-scale history, accuracy."""
    image = plots.training_curves({r.label: r.losses for r in ctx.training},
                                  {r.label: r.scales for r in ctx.training}, ctx.out / "training.png")
    fp16 = any(r.precision == "fp16" for r in ctx.training)
    note = ("fp16 needs loss scaling: the scale starts high, halves on each overflow (a skipped step) and grows "
            "again after a run of good steps." if fp16 else
            "bf16 has float32's exponent range, so it needs no loss scaling (the scale stays 1); on a CUDA machine "
            "the demo trains in fp16 with dynamic loss scaling instead. On CPUs without native bf16 arithmetic "
            "bf16 autocast can be slower than fp32; its gains are memory and GPU/AMX throughput.")
    return Section("Training: fp32 vs mixed precision", "training", [
        Text(f"Both runs start from the same initial weights and train {ctx.settings.epochs} epochs with Adam "
             "(one-cycle learning rate, batches of 64, one CPU thread) through mixq.MixedPrecision. " + note),
        training_table(ctx), Image(image.name, "training loss and loss scale per optimizer step")],
        data=[r.to_dict() for r in ctx.training])


def variants_table(ctx: DemoContext) -> Table:
    """The main table: one row per exported variant."""
    headers = ["variant", "size (KB)", "accuracy", "Δ vs fp32 (pp)"]
    headers += [f"{ctx.settings.backend.display} b{b} median (ms)" for b in ctx.settings.batches]
    headers += ["agreement with PyTorch", "max abs diff vs PyTorch"]
    rows = []
    for r in ctx.results:
        rows.append([r.variant, f"{r.size_kb:.1f}", f"{r.accuracy:.4f}", f"{r.accuracy_delta_pp:+.2f}"]
                    + [f"{r.latency[b].median_ms:.3f}" for b in ctx.settings.batches]
                    + [f"{r.agreement:.2%}", f"{r.max_abs_diff_vs_pytorch:.2e}"])
    return Table(headers, rows, "l" + "r" * (len(headers) - 1))


def variants_section(ctx: DemoContext) -> Section:
    """Size, accuracy, latency and agreement of every variant on ONNX Runtime."""
    names = [r.variant for r in ctx.results]
    size = plots.accuracy_vs_size(names, [r.size_kb for r in ctx.results], [r.accuracy for r in ctx.results],
                                  ctx.out / "accuracy_vs_size.png")
    latency = plots.latency_bars(names, {b: [r.latency[b].median_ms for r in ctx.results]
                                         for b in ctx.settings.batches}, ctx.out / "latency.png")
    title = ctx.settings.backend.title
    return Section(f"Variants on {title}", "variants", [
        Text(f"Each variant is exported with mixq.export_onnx and run in {title} ({ctx.settings.backend.label}, CPU, "
             f"{ctx.settings.threads} thread(s), {ctx.settings.latency_runs} timed runs after warm-up). Accuracy is "
             f"on the {len(ctx.data['y_test'])} held-out test images; agreement is the share of them where ONNX "
             f"{title} and mixq's PyTorch simulation of the same model predict the same class."),
        variants_table(ctx),
        Image(size.name, "test accuracy against ONNX file size"),
        Image(latency.name, f"median {title} latency per variant"),
    ], data=[r.to_dict() for r in ctx.results])


def layer_error_section(ctx: DemoContext) -> Section:
    """Per-layer quantization error of static int8 (one layer quantized at a time)."""
    rows = layer_sensitivity(ctx)
    image = plots.layer_error([r["layer"] for r in rows], [min(r["sqnr_db"], 99.0) for r in rows],
                              ctx.out / "layer_error.png", "static int8, one layer quantized at a time")
    table = Table(["layer", "type", "SQNR vs fp32 (dB)", "accuracy"],
                  [[r["layer"], r["type"], f"{r['sqnr_db']:.1f}", f"{r['accuracy']:.4f}"] for r in rows], "llrr")
    return Section("Per-layer quantization error", "layer_error", [
        Text("Each layer is quantized alone (static int8; residual adds follow their neighbours), the rest stays "
             "float, and the model's logits are compared with fp32 on the test images. The lowest SQNR marks the "
             "layer to keep in float (exclude=[...]) or to fine-tune with QAT."),
        table, Image(image.name, "SQNR of the logits per quantized layer")], data=rows)


def qat_section(ctx: DemoContext) -> Section:
    """PTQ vs QAT at 8 and 4 bits: what quantization-aware fine-tuning wins back."""
    rows = {r.variant: r for r in ctx.results}
    pairs = [("static int8", "QAT int8"), ("static w4", "QAT w4")]
    pairs = [{"weights": qat.removeprefix("QAT "), "ptq_accuracy": rows[ptq].accuracy,
              "qat_accuracy": rows[qat].accuracy, "qat_delta_vs_fp32_pp": rows[qat].accuracy_delta_pp}
             for ptq, qat in pairs if ptq in rows and qat in rows]
    table = Table(["weights", "PTQ accuracy", "QAT accuracy", "QAT − PTQ (pp)", "QAT vs fp32 (pp)"],
                  [[p["weights"], f"{p['ptq_accuracy']:.4f}", f"{p['qat_accuracy']:.4f}",
                    f"{(p['qat_accuracy'] - p['ptq_accuracy']) * 100:+.2f}", f"{p['qat_delta_vs_fp32_pp']:+.2f}"]
                   for p in pairs], "lrrrr")
    runs = ctx.artifacts.get("qat_runs", [])
    return Section("Quantization-aware training", "qat", [
        Text("mixq.prepare_qat copies the fp32 model with fake quantization on weights and activations (BatchNorm "
             "trains folded into its convolution), the same training loop fine-tunes it, and mixq.convert turns it "
             "into the static int8 model it simulated, bit for bit. With 4-bit weights and one scale per tensor, "
             "post-training quantization rounding to nearest loses accuracy; fine-tuning wins it back (the 4-bit PTQ "
             "row is without bias correction, mixq's default for convolutions, which wins back much of that loss "
             "without training). Fine-tuning: "
             + ", ".join(f"{r.label} {len(r.losses)} steps in {r.seconds:.1f} s" for r in runs) + "."),
        table], data={"pairs": pairs, "runs": [r.to_dict() for r in runs]})


def autoquant_section(ctx: DemoContext) -> Section:
    """What mixq.autoquantize measured and chose, layer by layer."""
    result = ctx.artifacts["autoquant"]
    report = result.report
    image = report.save_plot(ctx.out / "autoquant_sensitivity.png")
    sensitivity = Table(["layer", "type", "output SQNR alone (dB)", "chosen", "reason"],
                        [[r.name, r.kind, f"{min(r.output_sqnr_db, 999.0):.1f}", report.precisions.get(r.name, "-"),
                          r.reason] for r in report.sensitivity], "llrll")
    search = Table(["step", "change", "metric", "meets target", "evaluations"],
                   [[str(s.index), s.action, f"{s.metric:.4f}", "yes" if s.meets else "no", str(s.evaluations)]
                    for s in report.steps], "rlrlr")
    status = "met" if report.met else f"missed by {report.miss:.4f}"
    return Section("Automatic per-layer precision (autoquantize)", "autoquant", [
        Text(f"mixq.autoquantize calibrates once, ranks layers by the error each causes alone, and searches "
             f"per-layer precisions for the {report.objective} objective, timing candidates on "
             f"{ctx.settings.backend.title}, "
             f"within {report.max_drop:g} of fp32's validation accuracy ({report.baseline:.4f}): target {status} "
             f"with {report.evaluations} evaluations."),
        sensitivity, search, Image(image.name, "per-layer sensitivity and the precision chosen"),
        *[Text(note) for note in report.notes]], data=report.to_dict())


def kernels_section(ctx: DemoContext) -> Section:
    """What ONNX Runtime runs for each variant (and the chosen runtime, where it reports its compiled kernels and
    their precision, e.g. OpenVINO), and mixq's per-layer summaries."""
    shown = any(r.runtime_kernels is not None for r in ctx.results)
    runtime = ctx.settings.backend.display
    heads = ["variant", "integer kernels after ORT optimisation", "float compute kernels"]
    heads += [f"compute kernels on {runtime} (precision)"] if shown else []
    rows = [[r.variant, format_op_counts(r.integer_kernels), format_op_counts(r.float_compute)]
            + ([format_op_counts(r.runtime_kernels or {})] if shown else []) for r in ctx.results]
    blocks = [Table(heads, rows)] + [Code(f"{r.variant}:\n{r.summary}") for r in ctx.results if r.summary is not None]
    data = {r.variant: {"integer_kernels": r.integer_kernels, "float_compute": r.float_compute}
            | ({"runtime_kernels": r.runtime_kernels} if shown else {}) for r in ctx.results}
    title = f"What ONNX Runtime and {runtime} run" if shown else "What ONNX Runtime runs"
    title += ", and what mixq quantized"
    return Section(title, "kernels", blocks, data=data)


SECTIONS: list[Callable[[DemoContext], Section]] = [
    overview_section,
    training_section,
    variants_section,
    layer_error_section,
    qat_section,
    autoquant_section,
    kernels_section,
    litert_section,
]
