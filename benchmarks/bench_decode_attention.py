"""Does integer attention pay in a key/value-cache decoder? Float vs int8 attention in ONNX Runtime, one layer.

Graph mode quantizes attention's two MatMuls of activations (Q·Kᵀ and probabilities·V) for whole-sequence models.
A decoder with a key/value cache keeps its cache in float (that is what ``generate`` and mixq's cache export carry
between steps), so an int8 attention would quantize the whole cached K and V again at every generated token, to
multiply them with one query row. This benchmark times that trade in ONNX Runtime, at the shapes of one attention
layer (batch 1, 8 heads of 64), for a prompt (``prefill``: as many queries as cached keys) and for one generation
step (``decode``: one query against the cache), at several cache lengths:

* ``float``: ``MatMul(q, kᵀ)`` -> ``Mul`` (1/√d) -> ``Add`` (mask) -> ``Softmax`` -> ``MatMul(p, v)``, as a float
  export runs it;
* ``int8``: the same with QuantizeLinear/DequantizeLinear (uint8, per tensor) on both inputs of both MatMuls, the
  1/√d folded into the first one's scales, as mixq's graph mode exports it; ONNX Runtime fuses each into an integer
  MatMul (``optimized_op_types`` is printed). The two forms' outputs are compared (cosine), so the int8 one is
  checked to compute the same attention.

For contrast, a whole BERT-base-shaped encoder file is timed with integer and with float attention (mixq static,
``exclude`` of its attention MatMuls). Each pair is timed side by side in one process (interleaved rounds, medians,
``mixq.report.latency``). Prints the CPU flags; writes ``results/decode_attention.{json,md}`` unless ``--quick``.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_decode_attention.py            # ~3 min
    PYTHONPATH=src .venv/bin/python benchmarks/bench_decode_attention.py --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from mixq.export import optimized_op_types
from mixq.quant.cpu import cpu_flags
from mixq.report.latency import measure_interleaved, ort_session

RESULTS = Path(__file__).parent / "results"
HEADS, HEAD_DIM = 8, 64
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what ONNX Runtime's int8 MatMuls use
F32, U8 = TensorProto.FLOAT, TensorProto.UINT8


def _quantized(nodes: list, inits: list, name: str, scale: float, zero_point: int, factor: float = 1.0) -> str:
    """``name`` through QuantizeLinear -> DequantizeLinear (uint8, per tensor), the dequantized values times
    ``factor`` (a constant folded into the dequantize scale); returns the dequantized name."""
    inits += [helper.make_tensor(f"{name}_s", F32, [], [scale]), helper.make_tensor(f"{name}_z", U8, [], [zero_point]),
              helper.make_tensor(f"{name}_ds", F32, [], [scale * factor])]
    nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_ds", f"{name}_z"], [f"{name}_dq"])]
    return f"{name}_dq"


def _probability_max(inputs: dict[str, np.ndarray]) -> float:
    """The largest attention probability on ``inputs``: the min-max calibrated range of the probabilities."""
    logits = inputs["q"] @ inputs["k"].swapaxes(-1, -2) / math.sqrt(HEAD_DIM) + inputs["mask"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return float((e / e.sum(-1, keepdims=True)).max())


def attention_model(queries: int, keys: int, integer: bool) -> onnx.ModelProto:
    """One attention layer's core on ``queries`` query rows and ``keys`` cached keys (batch 1), its int8 ranges
    min-max calibrated on :func:`feeds`."""
    nodes: list = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    inits: list = []
    q, kt, v, scaled = "q", "kt", "v", "logits"
    if integer:  # symmetric ranges around zero point 128; 1/sqrt(d) folded into q's dequantize scale
        step = {name: 2 * float(np.abs(x).max()) / 255 for name, x in feeds(queries, keys).items()}
        q = _quantized(nodes, inits, "q", step["q"], 128, factor=1.0 / math.sqrt(HEAD_DIM))
        kt, v = _quantized(nodes, inits, "kt", step["k"], 128), _quantized(nodes, inits, "v", step["v"], 128)
    nodes.append(helper.make_node("MatMul", [q, kt], ["logits"]))
    if not integer:
        inits.append(helper.make_tensor("alpha", F32, [], [1.0 / math.sqrt(HEAD_DIM)]))
        nodes.append(helper.make_node("Mul", ["logits", "alpha"], ["scaled"]))
        scaled = "scaled"
    nodes += [helper.make_node("Add", [scaled, "mask"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["p"], axis=-1)]
    p = _quantized(nodes, inits, "p", _probability_max(feeds(queries, keys)) / 255, 0) if integer else "p"
    nodes.append(helper.make_node("MatMul", [p, v], ["out"]))
    inputs = [helper.make_tensor_value_info("q", F32, [1, HEADS, queries, HEAD_DIM]),
              helper.make_tensor_value_info("k", F32, [1, HEADS, keys, HEAD_DIM]),
              helper.make_tensor_value_info("v", F32, [1, HEADS, keys, HEAD_DIM]),
              helper.make_tensor_value_info("mask", F32, [1, 1, queries, keys])]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("out", F32, [1, HEADS, queries, HEAD_DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(queries: int, keys: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"q": rng.standard_normal((1, HEADS, queries, HEAD_DIM), dtype=np.float32),
            "k": rng.standard_normal((1, HEADS, keys, HEAD_DIM), dtype=np.float32),
            "v": rng.standard_normal((1, HEADS, keys, HEAD_DIM), dtype=np.float32),
            "mask": np.zeros((1, 1, queries, keys), dtype=np.float32)}


def measure(lengths: list[int], threads: int, rounds: int, runs: int, tmp: Path) -> list[dict]:
    rows = []
    for keys in lengths:
        for phase, queries in (("prefill", keys), ("decode", 1)):
            jobs, kinds = {}, {}
            for form in ("float", "int8"):
                path = tmp / f"{phase}_{keys}_{form}.onnx"
                onnx.save(attention_model(queries, keys, form == "int8"), path)
                kinds[form] = sorted(set(optimized_op_types(path)) - {"Transpose", "Add", "Softmax"})
                jobs[form] = (ort_session(path, threads), feeds(queries, keys))
            outputs = [session.run(None, inputs)[0].ravel().astype(np.float64) for session, inputs in jobs.values()]
            cos = float(outputs[0] @ outputs[1] / (np.linalg.norm(outputs[0]) * np.linalg.norm(outputs[1])))
            timed = measure_interleaved(jobs, runs=runs, rounds=rounds)
            ms = {form: t.median_ms for form, t in timed.items()}  # type: ignore[union-attr]
            rows.append({"phase": phase, "keys": keys, "queries": queries, "float_ms": ms["float"],
                         "int8_ms": ms["int8"], "int8_vs_float": ms["int8"] / ms["float"], "cos": cos,
                         "int8_ops": kinds["int8"]})
            print(f"{phase:8s} keys {keys:5d}: float {ms['float']:.4f} ms, int8 {ms['int8']:.4f} ms "  # noqa: T201
                  f"({ms['int8'] / ms['float']:.2f}x the time, output cos {cos:.4f}; "
                  f"int8 runs {', '.join(kinds['int8'])})")
    return rows


def encoder_rows(threads: int, rounds: int, tmp: Path) -> list[dict]:
    """Whole sequences for contrast: a BERT-base-shaped encoder (2 layers, 12 heads of 64, random weights, seq 128,
    padded) quantized static by mixq with integer attention (the default) and with its attention MatMuls excluded
    (float), both files timed side by side in ONNX Runtime at batch 1 and 16."""
    import torch
    import transformers

    import mixq

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(num_hidden_layers=2)).eval()
    ids = torch.randint(1000, 20000, (64, 128), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:, 100:] = 0
    batches = [{"input_ids": ids[i:i + 8], "attention_mask": mask[i:i + 8]} for i in range(0, 64, 8)]
    jobs_by_form = {}
    for form, options in (("int8", {}), ("float", {"exclude": ("*mixq_matmul*",)})):
        qmodel = mixq.quantize(model, "static", calib_data=batches, progress=False, **options)
        jobs_by_form[form] = mixq.export_onnx(qmodel, {k: v[:1] for k, v in batches[0].items()},
                                              tmp / f"encoder_{form}.onnx")
    rows = []
    for batch in (1, 16):
        tokens = {"input_ids": ids[:batch].numpy(), "attention_mask": mask[:batch].numpy()}
        jobs = {form: (ort_session(path, threads), tokens) for form, path in jobs_by_form.items()}
        timed = measure_interleaved(jobs, runs=rounds * max(1, 16 // batch), rounds=rounds)
        ms = {form: t.median_ms for form, t in timed.items()}  # type: ignore[union-attr]
        rows.append({"batch": batch, "float_ms": ms["float"], "int8_ms": ms["int8"],
                     "int8_vs_float": ms["int8"] / ms["float"]})
        print(f"encoder batch {batch:2d}: float attention {ms['float']:.2f} ms, int8 attention "  # noqa: T201
              f"{ms['int8']:.2f} ms ({ms['int8'] / ms['float']:.2f}x the time)")
    return rows


def render(result: dict) -> str:
    lines = ["# Integer attention with a key/value cache (one layer, ONNX Runtime)", "",
             f"{result['cpu']}; {result['threads']} threads; load {result['load']}. Command: `{result['command']}`.",
             "", "| phase | cached keys | float ms | int8 ms | int8 / float | int8 output cos to float |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['phase']} | {r['keys']} | {r['float_ms']:.4f} | {r['int8_ms']:.4f} | {r['int8_vs_float']:.2f}x "
              f"| {r['cos']:.4f} |"
              for r in result["rows"]]
    if result.get("encoder"):
        lines += ["", "Whole sequences, for contrast: a BERT-base-shaped encoder (2 layers, 12 heads of 64, seq 128) "
                  "quantized static by mixq, the whole file with integer attention vs the same with its attention "
                  "MatMuls float:", "", "| batch | float attention ms | int8 attention ms | int8 / float |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['float_ms']:.2f} | {r['int8_ms']:.2f} | {r['int8_vs_float']:.2f}x |"
                  for r in result["encoder"]]
    lines += ["", "At a generation step (one query row) int8 attention first quantizes the whole float cache, which "
              "reads it more than the float MatMul does: it cannot pay while the cache is float. (The one-layer "
              "prompt rows lose too, but in a whole encoder file integer attention breaks even or gains: the "
              "encoder rows; where it does not, `exclude=('*mixq_matmul*',)` keeps it float.) This is why a "
              "decoder that keeps a "
              "key/value cache stays on the layer-by-layer path (every Linear int8, float attention; "
              "`mixq.quant.graph_export`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two lengths, few runs; results not written")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    lengths = [128, 512] if args.quick else [128, 512, 2048]
    flags = sorted(cpu_flags() & set(FLAGS))
    cpu = f"{platform.machine()}, CPU flags: {', '.join(flags) or 'none of ' + ', '.join(FLAGS)}"
    print(cpu)  # noqa: T201
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(lengths, args.threads, rounds=3 if args.quick else 7, runs=30 if args.quick else 210,
                       tmp=Path(tmp))
        encoder = [] if args.quick else encoder_rows(args.threads, rounds=7, tmp=Path(tmp))
    command = " ".join(["PYTHONPATH=src .venv/bin/python benchmarks/bench_decode_attention.py", *sys.argv[1:]])
    result = {"cpu": cpu, "threads": args.threads, "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
              "command": command, "rows": rows, "encoder": encoder}
    if not args.quick:
        (RESULTS / "decode_attention.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "decode_attention.md").write_text(render(result))


if __name__ == "__main__":
    main()
