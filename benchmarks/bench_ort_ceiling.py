"""all-MiniLM-L6-v2 int8 in a plain ONNX Runtime session: how close mixq's files get to ORT's integer ceiling.

A plain session is what a user writes: ``intra_op_num_threads`` set, everything else ONNX Runtime's default
(optimisation level ``ORT_ENABLE_ALL``, spin-waiting threads; ``--no-spin`` turns spinning off, which a loaded
machine may need). Every file is timed in the same process in interleaved rounds (each variant once per round,
order rotated; median per variant), at batch 1 and 32, sequence 128; speed-up is a fp32 file's median over the
variant's. Variants:

* ``fp32``: ``mixq.export_onnx`` of the float model (its attention stays ``sdpa``, whose ONNX form carries an
  IsNaN + Where NaN guard); ``fp32 eager``: the same model switched to eager attention first (no guard); both with
  residual LayerNorms kept off ``SkipLayerNormalization`` and, on CPUs that compute denormals slowly, masked
  Softmax inputs floored (``mixq.export.onnx.softmax``). ``fp32 plain``: the ``fp32`` file without either of
  mixq's rewrites, as a plain ``torch.onnx.export`` writes it: the file a user has.
* ``mixq static`` (graph mode, integer attention, 1/√d folded) and ``mixq dynamic`` (eager attention).
* ``ORT quantize_dynamic`` (per-channel) of each fp32 file: ONNX Runtime's own quantizer.
* ``(SLN fused)``: the same file with mixq's Unsqueeze/Squeeze around each residual LayerNorm removed, so ONNX
  Runtime fuses ``SkipLayerNormalization`` as it did before; ``(no Softmax floor)``: with the Softmax floors
  removed.

Fidelity: mean cosine of mean-pooled embeddings to the PyTorch fp32 model's, over ``--eval`` sentences.
``--profile`` adds ONNX Runtime's per-operator time shares (``enable_profiling``) at batch 32.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_ort_ceiling.py            # 10-40 min on 2 busy cores
    PYTHONPATH=src .venv/bin/python benchmarks/bench_ort_ceiling.py --rounds 3 --profile
"""

from __future__ import annotations

import argparse
import collections
import copy
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

import mixq
from mixq.report.latency import settle

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformers import cpu_flags, load_minilm, pooled, sentences  # noqa: E402


def session(path: Path, threads: int, spin: bool, disabled: list[str] | None = None,
            profile: str | None = None) -> Any:
    """A plain CPU session: threads set, default optimisation level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled or [])


def fused_again(path: Path, out: Path) -> Path:
    """``path`` without mixq's Unsqueeze/Squeeze around residual LayerNorms (ORT then fuses SkipLayerNorm)."""
    import onnx

    model = onnx.load(str(path))
    lifted = {n.output[0]: n.input[0] for n in model.graph.node if n.name.endswith("_mixq_unsqueeze")}
    squeezed = {n.input[0]: n.output[0] for n in model.graph.node if n.name.endswith("_mixq_squeeze")}
    kept = [n for n in model.graph.node if not n.name.endswith(("_mixq_unsqueeze", "_mixq_squeeze"))]
    for node in kept:
        node.input[:] = [lifted.get(i, i) for i in node.input]
        node.output[:] = [squeezed.get(o, o) for o in node.output]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


def unfloored(path: Path, out: Path) -> Path:
    """``path`` without mixq's Softmax floors (each Softmax reads its masked scores again)."""
    import onnx

    model = onnx.load(str(path))
    floor = [n for n in model.graph.node if n.name.startswith("mixq_softmax_floor")]
    restored = {n.output[0]: n.input[0] for n in floor if n.op_type == "Max"}
    kept = [n for n in model.graph.node if not n.name.startswith("mixq_softmax_floor")]
    for node in kept:
        node.input[:] = [restored.get(i, i) for i in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    onnx.save(model, str(out))
    return out


def embeddings(path: Path, tokens: dict[str, np.ndarray], threads: int, batch: int = 32) -> np.ndarray:
    sess = session(path, threads, spin=False)
    names = [i.name for i in sess.get_inputs()]
    n = len(tokens["input_ids"])
    hidden = [sess.run(None, {k: tokens[k][i:i + batch] for k in names})[0] for i in range(0, n, batch)]
    return pooled(np.concatenate(hidden), tokens["attention_mask"])


def time_variants(variants: dict[str, tuple[Path, list[str]]], tokens: dict[str, np.ndarray], batch: int,
                  threads: int, spin: bool, rounds: int) -> dict[str, float]:
    """Median ms per call at ``batch``; rounds interleaved, order rotated."""
    sessions = {name: session(p, threads, spin, disabled) for name, (p, disabled) in variants.items()}
    feeds = {name: {i.name: tokens[i.name][:batch] for i in s.get_inputs()} for name, s in sessions.items()}
    runs = max(1, 16 // batch)
    for name, s in sessions.items():
        s.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            settle(sessions[name], feeds[name])  # the previous variant's spinning threads park (untimed call)
            for _ in range(runs):
                start = time.perf_counter()
                sessions[name].run(None, feeds[name])
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def op_shares(path: Path, tokens: dict[str, np.ndarray], threads: int, spin: bool, disabled: list[str],
              tmp: Path) -> dict[str, float]:
    """Percent of kernel time per operator type (ONNX Runtime's profiler, two runs at batch 32 after a warm-up)."""
    sess = session(path, threads, spin, disabled, profile=str(tmp / "profile"))
    feeds = {i.name: tokens[i.name][:32] for i in sess.get_inputs()}
    for _ in range(3):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    total: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name"):
            total[e["args"]["op_name"]] += e["dur"]
    all_us = sum(total.values()) or 1
    return {op: round(100 * us / all_us, 1) for op, us in total.most_common(8)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib", type=int, default=128, help="calibration sentences")
    p.add_argument("--eval", type=int, default=128, help="evaluation sentences")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--no-spin", dest="spin", action="store_false", help="ORT threads do not spin-wait")
    p.add_argument("--profile", action="store_true", help="per-operator time shares at batch 32")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from mixq.quant.graph_export import export_friendly

    flags = cpu_flags()
    print(f"CPU: {flags}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    model, tok = load_minilm(args.seq)
    texts = sentences(args.calib + args.eval)

    calib, evals = tok(texts[:args.calib]), tok(texts[args.calib:])
    batches = [{k: torch.from_numpy(v[i:i + 16]) for k, v in calib.items()} for i in range(0, args.calib, 16)]
    example = {k: torch.from_numpy(v[:1]) for k, v in calib.items()}
    work = Path(tempfile.mkdtemp(prefix="mixq-ort-ceiling-"))
    files: dict[str, Path] = {"fp32": mixq.export_onnx(model, example, work / "fp32.onnx")}
    eager = copy.deepcopy(model)
    export_friendly(eager)
    files["fp32 eager"] = mixq.export_onnx(eager, example, work / "fp32_eager.onnx")
    for mode in ("static", "dynamic"):
        start = time.perf_counter()
        qmodel = mixq.quantize(model, mode, calib_data=batches, progress=False)
        files[f"mixq {mode}"] = mixq.export_onnx(qmodel, example, work / f"mixq_{mode}.onnx")
        print(f"mixq {mode}: quantized and exported in {time.perf_counter() - start:.0f} s", flush=True)
    for base in ("fp32", "fp32 eager"):
        out = work / f"ort_dynamic_{base.replace(' ', '_')}.onnx"
        quantize_dynamic(files[base], out, per_channel=True, weight_type=QuantType.QInt8)
        files[f"ORT quantize_dynamic of {base}"] = out
    files["mixq static (SLN fused)"] = fused_again(files["mixq static"], work / "mixq_static_fused.onnx")
    for name in ("mixq static", "mixq dynamic"):
        files[f"{name} (no Softmax floor)"] = unfloored(files[name], work / f"{name.replace(' ', '_')}_unfloored.onnx")
    files["fp32 plain"] = unfloored(fused_again(files["fp32"], work / "fp32_fused.onnx"), work / "fp32_plain.onnx")

    with torch.no_grad():
        reference = pooled(model(**{k: torch.from_numpy(v) for k, v in evals.items()}), evals["attention_mask"])
    cos = {name: float((embeddings(f, evals, args.threads) * reference).sum(1).mean()) for name, f in files.items()}
    variants = {name: (f, []) for name, f in files.items()}
    ops = {name: collections.Counter(n.op_type for n in onnx.load(str(f)).graph.node) for name, f in files.items()}
    rows: dict[str, dict[str, Any]] = {name: {"cos": round(cos[name.split(" + ")[0]], 4)} for name in variants}
    for batch in (1, 32):
        median = time_variants(variants, evals, batch, args.threads, args.spin, args.rounds)
        for name in variants:
            rows[name][f"b{batch}_ms"] = round(median[name], 2)
            for base in ("fp32", "fp32 plain"):
                rows[name][f"b{batch}_vs_{base}"] = round(median[base] / median[name], 2)
        print(f"batch {batch}: " + ", ".join(f"{n} {median[n]:.1f} ms" for n in variants), flush=True)
    unpadded = {"input_ids": np.random.default_rng(0).integers(1000, 20000, evals["input_ids"].shape),
                "attention_mask": np.ones_like(evals["attention_mask"])}
    floor_cost = {name: variants[name] for name in ("fp32", "fp32 plain", "mixq static",
                                                    "mixq static (no Softmax floor)")}
    for batch in (1, 32):  # the floor's cost where nothing is masked: every sequence 128 real tokens
        median = time_variants(floor_cost, unpadded, batch, args.threads, args.spin, args.rounds)
        for name in floor_cost:
            rows[name][f"unpadded_b{batch}_ms"] = round(median[name], 2)
        print(f"no padding, batch {batch}: " + ", ".join(f"{n} {median[n]:.1f} ms" for n in floor_cost), flush=True)
    profiles = {}
    if args.profile:
        for name in ("fp32 plain", "fp32 eager", "mixq static", "mixq static (no Softmax floor)", "mixq dynamic",
                     "ORT quantize_dynamic of fp32 eager"):
            profiles[name] = op_shares(files[name], evals, args.threads, args.spin, [], work)
            print(f"profile {name}: {profiles[name]}", flush=True)
    result = {"cpu": flags, "threads": args.threads, "seq": args.seq, "rounds": args.rounds, "spin": args.spin,
              "load_average_end": round(os.getloadavg()[0], 1), "onnxruntime": onnxruntime.__version__,
              "rows": rows, "profiles": profiles,
              "nodes": {n: {k: c[k] for k in ("IsNaN", "Where", "Mul", "Unsqueeze", "Max")} for n, c in ops.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ort_ceiling.json").write_text(json.dumps(result, indent=1))
    markdown = table(result, " ".join(sys.argv[1:]))
    (args.out / "ort_ceiling.md").write_text(markdown)
    print(markdown)


def table(result: dict[str, Any], argv: str) -> str:
    """The Markdown results table from the JSON result."""
    lines = [f"`PYTHONPATH=src .venv/bin/python benchmarks/bench_ort_ceiling.py {argv}`".replace(" `", "`"), "",
             f"CPU: {result['cpu']}; {result['threads']} threads, seq {result['seq']}, ONNX Runtime "
             f"{result['onnxruntime']}, {result['rounds']} interleaved rounds, spin-waiting "
             f"{'on' if result['spin'] else 'off'}; load average {result['load_average_end']} at the end.", "",
             "| variant | cos to PyTorch fp32 | b1 ms | b32 ms | speed-up vs fp32, b1 / b32 | "
             "vs fp32 plain, b1 / b32 |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['cos']:.4f} | {row['b1_ms']:.1f} | {row['b32_ms']:.1f} | "
                     f"{row['b1_vs_fp32']:.2f}x / {row['b32_vs_fp32']:.2f}x | "
                     f"{row['b1_vs_fp32 plain']:.2f}x / {row['b32_vs_fp32 plain']:.2f}x |")
    unpadded = {name: row for name, row in result["rows"].items() if "unpadded_b1_ms" in row}
    if unpadded:
        lines += ["", "With no padding (every sequence 128 real tokens: nothing masked, the floor only costs), ms "
                  "at b1 / b32: " + "; ".join(f"{name} {row['unpadded_b1_ms']:.1f} / {row['unpadded_b32_ms']:.1f}"
                                               for name, row in unpadded.items())]
    if result["profiles"]:
        lines += ["", "Share of kernel time per operator at batch 32 (ONNX Runtime profiler):", ""]
        lines += [f"- {name}: " + ", ".join(f"{op} {pct}%" for op, pct in shares.items())
                  for name, shares in result["profiles"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
