"""Decoder LMs in 4 and 3 bits: mixq RTN / GPTQ / AWQ vs ONNX Runtime's own ``matmul_nbits_quantizer``.

One run reports: held-out perplexity of a byte-level Llama-style LM trained here (fp32; each method at w4 g128,
w4 g32 and w3 g64, asymmetric, in PyTorch and through the exported key/value-cache decoder in ONNX Runtime; ORT's
RTN / GPTQ / HQQ on the fp32 export, which has no 3-bit kernel); ONNX Runtime latency (2 threads) of prefill
(1 x 128 tokens) and per-token decode on a 256-token cache, int4 vs fp32, on a weight-dominated random-weight
model; and the time and peak memory of block-by-block vs whole-model GPTQ calibration.

    python benchmarks/bench_llm.py            # everything; writes benchmarks/results/llm.{json,md}
    python benchmarks/bench_llm.py --part quality & python benchmarks/bench_llm.py --part speed &
    python benchmarks/bench_llm.py --part memory; wait; python benchmarks/bench_llm.py --part report
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch
from llm_latency import BIG, big_model, latency, memory_comparison, probe_memory
from llm_model import corpus as build_corpus
from llm_model import perplexity_ort, perplexity_torch, train, windows
from ptq_report import machine_info

import mixq
from mixq.export.onnx.decoder import decoder_feeds

HERE = Path(__file__).resolve().parent
CONFIGS = [(4, 128), (4, 32), (3, 64)]
METHODS = ("rtn", "gptq", "awq")
ORT_METHODS = ("rtn", "gptq", "hqq")
PARTS = ("quality", "speed", "memory")


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Reader:
    """ORT's CalibrationDataReader over the calibration batches (empty caches: a prefill per batch). It holds plain
    arrays only: ORT's GPTQ deep-copies the reader."""

    def __init__(self, batches: list[torch.Tensor], session: Any) -> None:
        self.feeds, self.i = [decoder_feeds(session, b.numpy()) for b in batches], 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self) -> None:
        self.i = 0

    def __iter__(self):
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


class PeerSkipped(RuntimeError):
    """ORT's quantizer cannot run this configuration; the message (recorded in the row) says why."""


def _odd_block_matmuls(model: onnx.ModelProto, group: int, skip: list[str]) -> list[tuple[str, int]]:
    """(name, K) of the MatMuls to quantize whose K spans an odd number of ``group``-sized blocks."""
    inits = {t.name: t for t in model.graph.initializer}
    return [(n.name, int(inits[n.input[1]].dims[0])) for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and n.name not in skip
            and -(-int(inits[n.input[1]].dims[0]) // group) % 2]


def ort_peer(fp32_path: Path, out: Path, method: str, bits: int, group: int, calib: list[torch.Tensor]) -> Path:
    """ONNX Runtime's matmul_nbits_quantizer on the fp32 export (weights folded to MatMul initializers first).

    RTN is the quantizer's default algorithm (``DefaultWeightOnlyQuantConfig``, ORT's native blockwise RTN). Its
    ``RTNWeightOnlyQuantConfig`` and ``GPTQWeightOnlyQuantConfig`` are a port of Intel Neural Compressor whose
    asymmetric 4-bit packing puts zero points two per byte across columns and then reshapes them to one row per
    column, which fails (``cannot reshape array of size 64 into shape (128,newaxis)``) when a column has an odd
    number of blocks, e.g. K=128 or 384 at block 128: an ORT bug, not the export. The two RTNs give the same
    perplexity where both run; GPTQ has no other implementation, so that row records the reason instead.
    """
    import onnxscript.optimizer
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    model = onnxscript.optimizer.optimize(onnx.load(str(fp32_path)))  # fold weight transposes into initializers
    inits = {t.name: t for t in model.graph.initializer}
    small = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits
             and (len(inits[n.input[1]].dims) != 2 or inits[n.input[1]].dims[0] < group)]  # e.g. rotary frequencies
    if method == "rtn":
        algo = mnq.DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=False, bits=bits)
    elif method == "gptq":
        odd = _odd_block_matmuls(model, group, small)
        if bits == 4 and odd:
            raise PeerSkipped(f"ORT bug: its GPTQ (an Intel Neural Compressor port) cannot pack asymmetric 4-bit "
                              f"zero points for an odd number of blocks per column; here {len(odd)} MatMuls have "
                              f"K/{group} odd (e.g. K={odd[0][1]})")
        algo = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(calib, _session(fp32_path)),
                                             block_size=group)  # its own default is 128 whatever the quantizer's
    else:
        algo = mnq.HQQWeightOnlyQuantConfig(block_size=group, bits=bits)
    quant = mnq.MatMulNBitsQuantizer(model, bits=bits, block_size=group, is_symmetric=False,
                                     nodes_to_exclude=small, algo_config=algo)
    quant.process()
    result = quant.model
    proto = result.model if hasattr(result, "model") else result
    if not any(n.op_type == "MatMulNBits" for n in proto.graph.node):
        raise RuntimeError(f"ORT's {method} quantizer produced no MatMulNBits")
    onnx.save(proto, str(out))
    return out


def _skipped(name: str, bits: int, group: int, note: str) -> dict[str, Any]:
    """A row without results: ``note`` says why (shown in the table's last column)."""
    return {"variant": name, "bits": bits, "group": group, "ppl_torch": None, "ppl_ort": None, "quantize_s": None,
            "file_mb": None, "note": note.replace("|", "/")}


def _row(name: str, bits: int | None, group: int | None, ppl_torch: float | None, ppl_ort: float,
         seconds: float | None, size: int) -> dict[str, Any]:
    return {"variant": name, "bits": bits, "group": group, "ppl_torch": ppl_torch, "ppl_ort": ppl_ort,
            "quantize_s": seconds, "file_mb": size / 1e6}


def quality(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    train_data, held = build_corpus()
    cache = None if args.quick else HERE / ".cache" / f"byte_llama_128x4_{args.steps}.pt"
    model, train_info = train(train_data, 40 if args.quick else args.steps, cache)
    print(f"trained: {train_info}", flush=True)
    eval_x = windows(held, 16 if args.quick else args.eval_windows, seed=1)
    calib = list(windows(train_data, 8 * args.calib_batches, seed=2).split(8))
    fp32_path = mixq.export_decoder_onnx(model, tmp / "fp32.onnx")
    rows = [_row("fp32", None, None, perplexity_torch(model, eval_x), perplexity_ort(_session(fp32_path), eval_x),
                 None, fp32_path.stat().st_size)]
    print(rows[-1], flush=True)
    for bits, group in args.configs or CONFIGS:
        for method in METHODS:
            start = time.perf_counter()
            q = mixq.quantize(model, "weight_only", bits=bits, group_size=group, symmetric=False, method=method,
                              calib_data=calib if method != "rtn" else None, progress=False)
            seconds = time.perf_counter() - start
            path = mixq.export_decoder_onnx(q, tmp / f"mixq_{method}_w{bits}g{group}.onnx")
            rows.append(_row(f"mixq {method}", bits, group, perplexity_torch(q, eval_x),
                             perplexity_ort(_session(path), eval_x), seconds, path.stat().st_size))
            print(rows[-1], flush=True)
        for method in ORT_METHODS:
            if bits not in (2, 4, 8):
                rows.append(_skipped(f"ORT {method}", bits, group, "matmul_nbits_quantizer takes 2, 4 or 8 bits"))
                continue
            start = time.perf_counter()
            try:
                path = ort_peer(fp32_path, tmp / f"ort_{method}_w{bits}g{group}.onnx", method, bits, group, calib)
            except Exception as err:  # the peer's failure is a result too: recorded per row, the run goes on
                reason = str(err) if isinstance(err, PeerSkipped) else \
                    f"ORT's quantizer failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
                rows.append(_skipped(f"ORT {method}", bits, group, reason))
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - start
            rows.append(_row(f"ORT {method}", bits, group, None, perplexity_ort(_session(path), eval_x), seconds,
                             path.stat().st_size))
            print(rows[-1], flush=True)
    return {"train": train_info, "eval_tokens": int(eval_x.numel()), "calib_tokens": sum(int(c.numel()) for c in calib),
            "rows": rows}


def speed(tmp: Path) -> dict[str, Any]:
    model = big_model()
    fp32 = mixq.export_decoder_onnx(model, tmp / "big_fp32.onnx")
    q = mixq.quantize(model, "weight_only", bits=4, group_size=32, progress=False)
    int4 = mixq.export_decoder_onnx(q, tmp / "big_int4.onnx")
    del model, q
    times = latency({"fp32": fp32, "int4": int4}, threads=2)
    one_thread = latency({"fp32": fp32, "int4": int4}, threads=1)
    sizes = {"fp32": fp32.stat().st_size / 1e6, "int4": int4.stat().st_size / 1e6}
    return {"model": BIG, "int4": "mixq RTN w4 g32 symmetric", "latency_ms": times, "latency_ms_1_thread": one_thread,
            "file_mb": sizes, "load_average_1min": os.getloadavg()[0]}


def targets(result: dict[str, Any]) -> list[str]:
    rows = result["quality"]["rows"]
    fp32 = rows[0]["ppl_ort"]
    get = {(r["variant"], r["bits"], r["group"]): r for r in rows}
    out = []
    def ppl(variant: str, bits: int, group: int) -> float | None:
        row = get.get((variant, bits, group))
        return None if row is None else row["ppl_ort"]

    for bits, group in [(4, 128), (3, 64)]:
        rtn = ppl("mixq rtn", bits, group)
        methods = [v for v in (ppl("mixq gptq", bits, group), ppl("mixq awq", bits, group)) if v is not None]
        if rtn is None or not methods:
            out.append(f"w{bits} g{group}: not measured in this run")
            continue
        best = min(methods) - fp32
        rtn -= fp32
        out.append(f"w{bits} g{group}: best of GPTQ/AWQ increase {best:+.4f} vs RTN {rtn:+.4f} "
                   f"(target <= half: {'met' if best <= rtn / 2 else 'NOT met'})")
    for bits, group in CONFIGS:
        peers = [v for m in ORT_METHODS if (v := ppl(f"ORT {m}", bits, group)) is not None]
        ours = [v for m in ("gptq", "awq") if (v := ppl(f"mixq {m}", bits, group)) is not None]
        if peers and ours:
            out.append(f"w{bits} g{group}: best mixq {min(ours):.4f} vs best ORT quantizer {min(peers):.4f} "
                       f"({'met' if min(ours) <= min(peers) else 'NOT met'})")
    for r in rows:
        if r["ppl_torch"] is not None:
            gap = abs(r["ppl_ort"] - r["ppl_torch"]) / r["ppl_torch"]
            if gap > 1e-3:
                out.append(f"{r['variant']} w{r['bits']} g{r['group']}: PyTorch vs ORT differ by {gap:.2%} (> 0.1%)")
    lat = result["speed"]["latency_ms"]
    ratio = lat["int4"]["decode"] / lat["fp32"]["decode"]
    out.append(f"decode int4/fp32 = {ratio:.2f}x (target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")
    size = result["speed"]["file_mb"]["int4"] / result["speed"]["file_mb"]["fp32"]
    out.append(f"file int4/fp32 = {size:.3f}x (target <= 0.2: {'met' if size <= 0.2 else 'NOT met'})")
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    q = result["quality"]
    commands = ", ".join(f"`{c}`" for c in result["commands"])
    lines = ["# bench_llm", "", f"{commands}; quality on {m['cpu']} ({m['logical_cpus']} CPUs; {flags}); "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, transformers {m['transformers']}, "
             f"commit {m['git_commit']}.", "",
             f"Byte-level Llama (4 layers, 128 wide) trained here: {q['train']}. Held-out perplexity on "
             f"{q['eval_tokens']} tokens; GPTQ/AWQ calibrated on {q['calib_tokens']} tokens; all asymmetric.", "",
             "| variant | bits | group | ppl PyTorch | ppl ORT | vs fp32 | quantize s | file MB |",
             "|---|---|---|---|---|---|---|---|"]
    fp32 = q["rows"][0]["ppl_ort"]
    for r in q["rows"]:
        if r["ppl_ort"] is None:
            lines.append(f"| {r['variant']} | {r['bits']} | {r['group']} | - | - | - | - | {r.get('note', '')} |")
            continue
        pt = "-" if r["ppl_torch"] is None else f"{r['ppl_torch']:.4f}"
        qs = "-" if r["quantize_s"] is None else f"{r['quantize_s']:.1f}"
        lines.append(f"| {r['variant']} | {r['bits'] or '-'} | {r['group'] or '-'} | {pt} | {r['ppl_ort']:.4f} | "
                     f"{(r['ppl_ort'] / fp32 - 1) * 100:+.2f}% | {qs} | {r['file_mb']:.2f} |")
    s = result["speed"]
    sm = result.get("machines", {}).get("speed", m)
    sflags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in sm["cpu_flags"].items())
    lines += ["", f"Latency measured on {sm['cpu']} ({sm['logical_cpus']} CPUs; {sflags}), commit "
              f"{sm['git_commit']}.", "",
              f"Latency, ONNX Runtime 2 threads, median of interleaved rounds, random-weight Llama {s['model']} "
              f"({s['int4']}):", "", "| | prefill 1x128 ms | decode ms/token (256 cache) | file MB |",
              "|---|---|---|---|"]
    for k in ("fp32", "int4"):
        lines.append(f"| {k} | {s['latency_ms'][k]['prefill']:.1f} | {s['latency_ms'][k]['decode']:.2f} | "
                     f"{s['file_mb'][k]:.1f} |")
    if "latency_ms_1_thread" in s:
        lines += ["", "The same with 1 thread:", "", "| | prefill 1x128 ms | decode ms/token |", "|---|---|---|"]
        lines += [f"| {k} | {s['latency_ms_1_thread'][k]['prefill']:.1f} | "
                  f"{s['latency_ms_1_thread'][k]['decode']:.2f} |" for k in ("fp32", "int4")]
    load = s.get("load_average_1min", float("nan"))
    lines.append(f"\nMachine load average while timing: {load:.1f}"
                 + (" (shared with other jobs; latencies are inflated and noisy)." if load > 1.5 else " (quiet)."))
    mem = result["memory"]
    lines += ["", "GPTQ w4 g128 calibration of that model (8 x 128 tokens), each in a fresh process:", "",
              "| calibration | seconds | peak RSS MiB | growth over loaded model MiB |", "|---|---|---|---|"]
    for k, v in mem.items():
        lines.append(f"| {k} | {v['seconds']:.1f} | {v['peak_rss_mib']:.0f} | {v['peak_growth_mib']:.0f} |")
    lines += ["", "Targets:", ""] + [f"- {t}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny training, few windows")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (8 x 128 bytes; ~3 min, 2 cores)")
    parser.add_argument("--eval-windows", type=int, default=64, help="held-out windows of 128 bytes")
    parser.add_argument("--calib-batches", type=int, default=8, help="calibration batches of 8 x 128 bytes")
    parser.add_argument("--part", choices=PARTS + ("all", "report"), default="all",
                        help="run one part (each writes results/llm_<part>.json; parts can run in parallel), "
                             "'report' to combine them into llm.json and llm.md, or 'all'")
    parser.add_argument("--config", dest="configs", action="append", type=lambda t: tuple(map(int, t.split(","))),
                        help="quality part: only this BITS,GROUP (repeatable; each writes llm_quality_wBgG.json)")
    parser.add_argument("--probe-memory", choices=("blockwise", "whole"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # PyTorch work single-threaded: on a shared 2-core machine 2 threads spin-wait
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    if args.probe_memory:
        print(json.dumps(probe_memory(args.probe_memory)))
        return 0
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    suffix = "_quick" if args.quick else ""
    parts = PARTS if args.part == "all" else (() if args.part == "report" else (args.part,))
    for part in parts:
        info = machine_info(HERE.parent)
        print("CPU:", info["cpu"], "flags:", info["cpu_flags"], flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            if part == "quality":
                data = quality(args, Path(tmp))
            elif part == "speed":
                data = speed(Path(tmp))
            else:
                data = memory_comparison()
        data = {"command": "python benchmarks/bench_llm.py " + " ".join(sys.argv[1:]), "machine": info,
                "result": data}
        tag = "".join(f"_w{b}g{g}" for b, g in args.configs) if part == "quality" and args.configs else ""
        (results / f"llm_{part}{tag}{suffix}.json").write_text(json.dumps(data, indent=2) + "\n")
        print(part, json.dumps(data["result"])[:2000], flush=True)
    if args.part in ("all", "report"):
        loaded = {p: json.loads((results / f"llm_{p}{suffix}.json").read_text()) for p in PARTS if p != "quality"}
        pieces = [json.loads(f.read_text()) for f in sorted(results.glob(f"llm_quality*{suffix}.json"))]
        rows = {(r["variant"], r["bits"], r["group"]): r for piece in pieces for r in piece["result"]["rows"]}
        loaded["quality"] = {**pieces[0], "result": {**pieces[0]["result"], "rows": list(rows.values())},
                             "command": "; ".join(sorted({p["command"] for p in pieces}))}
        result = {"commands": sorted({v["command"] for v in loaded.values()}), "machine": loaded["quality"]["machine"],
                  "machines": {p: v["machine"] for p, v in loaded.items()},
                  **{p: v["result"] for p, v in loaded.items()}}
        result["targets"] = targets(result)
        (results / f"llm{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
        (results / f"llm{suffix}.md").write_text(markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
