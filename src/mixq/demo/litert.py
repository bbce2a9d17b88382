"""The demo's LiteRT rows: the fp32, static int8, dynamic int8 and fp16 variants written as ``.tflite`` files and
run in LiteRT (XNNPACK), when the ``mixq[litert]`` extra is installed."""

from __future__ import annotations

from mixq.demo.context import DemoContext
from mixq.export.backend import get_format, get_runtime
from mixq.report import Section, Table, Text, measure_latency

# demo variant -> LiteRT mode it becomes (export_tflite picks the mode from the model's layers)
LITERT_VARIANTS = {"fp32": "float32", "static int8": "full-integer", "dynamic int8": "dynamic-range",
                   "fp16": "float16"}
QUICK = ("fp32", "static int8")  # --quick converts two files (a conversion takes seconds)


def litert_rows(ctx: DemoContext) -> list[dict]:
    """Export, run and time each LiteRT variant; one dict per file (empty when the extra is missing)."""
    runtime = get_runtime("litert")
    fmt = get_format(runtime.format)
    if not runtime.available():
        return []
    from mixq.export.tflite import COMPUTE_OPS, TFLiteRunner  # LiteRT's operator names; batches row by row

    models = ctx.artifacts.get("models", {})
    x_test, y_test = ctx.data["x_test"], ctx.data["y_test"].numpy()
    threads = max(2, ctx.settings.threads)
    rows = []
    for variant, mode in LITERT_VARIANTS.items():
        if variant not in models or (ctx.settings.quick and variant not in QUICK):
            continue
        model = models[variant]
        path = fmt.export(model, ctx.example[:1], ctx.out / f"{variant.replace(' ', '_')}{fmt.suffix}")
        logits = TFLiteRunner(path, threads=threads)(x_test)  # the file's batch is fixed at 1
        sim = model(x_test).detach().float().numpy()
        session = runtime.session(path, threads)
        latency = measure_latency(session, session.random_feeds(1), runs=ctx.settings.latency_runs)
        info = fmt.inspect(path)
        compute = [op for op in info.ops if op.op_type in COMPUTE_OPS]
        rows.append({"variant": variant, "mode": mode, "file": path.name, "size_kb": path.stat().st_size / 1024,
                     "accuracy": float((logits.argmax(1) == y_test).mean()),
                     "agreement": float((logits.argmax(1) == sim.argmax(1)).mean()),
                     "latency_b1_ms": latency.median_ms, "threads": threads,
                     "compute_ops": len(compute), "compute_ops_on_xnnpack": sum(op.xnnpack for op in compute),
                     "weight_types": sorted({op.input_types[1] for op in compute if len(op.input_types) > 1})})
    return rows


def litert_table(rows: list[dict]) -> Table:
    base = rows[0]["latency_b1_ms"] if rows else 1.0
    return Table(["LiteRT file", "mode", "size (KB)", "accuracy", "agreement with PyTorch", "b1 median (ms)",
                  "vs fp32", "weights", "Conv/FC on XNNPACK"],
                 [[r["file"], r["mode"], f"{r['size_kb']:.1f}", f"{r['accuracy']:.4f}", f"{r['agreement']:.2%}",
                   f"{r['latency_b1_ms']:.3f}", f"{r['latency_b1_ms'] / base:.2f}x", ", ".join(r["weight_types"]),
                   f"{r['compute_ops_on_xnnpack']}/{r['compute_ops']}"] for r in rows], "llrrrrrlr")


def litert_section(ctx: DemoContext) -> Section:
    """The LiteRT rows, or how to get them."""
    runtime = get_runtime("litert")
    if not runtime.available():
        return Section("LiteRT (.tflite)", "litert", [
            Text(f"The LiteRT extra is not installed, so no .tflite files were written ({runtime.install_hint})."),
        ], data=[])
    rows = ctx.artifacts.setdefault("litert", litert_rows(ctx))
    fastest = min(rows, key=lambda r: r["latency_b1_ms"]) if rows else None
    return Section("LiteRT (.tflite)", "litert", [
        Text("The same models written with mixq.export_tflite and run in LiteRT's interpreter with XNNPACK "
             f"({rows[0]['threads'] if rows else 2} threads, batch 1, {ctx.settings.latency_runs} timed runs after "
             "warm-up): static int8 becomes a full-integer file on mixq's own scales, dynamic int8 a dynamic-range "
             "file with mixq's int8 weights, fp16 a float16 file. Agreement is with mixq's PyTorch simulation of the "
             "same model (ONNX Runtime's dynamic quantization differs from LiteRT's, so dynamic-range agreement is "
             "approximate by design)."
             + (f" Fastest: {fastest['file']}." if fastest else "")),
        litert_table(rows)], data=rows)

