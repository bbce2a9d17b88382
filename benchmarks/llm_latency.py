"""ONNX Runtime latency of a weight-dominated decoder (random weights; only speed and size are measured there),
and the time and peak memory of one-block-at-a-time vs whole-model calibration (each in a fresh process)."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from llm_model import small_config
from transformers import LlamaForCausalLM

import mixq
from mixq.export.onnx.decoder import decoder_feeds

BIG = {"hidden": 1024, "layers": 4, "intermediate": 2816, "heads": 16}


def big_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(small_config(**BIG)).eval()


def _session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spin-waits on a shared machine
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency(paths: dict[str, Path], rounds: int = 7, decode_steps: int = 16, cache: int = 256,
            prompt: int = 128, threads: int = 2) -> dict[str, dict[str, float]]:
    """Median prefill (1 x ``prompt`` tokens) and per-token decode (1 token on a ``cache``-token cache) times in ms,
    variants interleaved round by round so machine load hits them alike."""
    rng = np.random.default_rng(0)
    sessions = {k: _session(p, threads) for k, p in paths.items()}
    prefill_ids = rng.integers(0, 256, (1, prompt), dtype=np.int64)
    cache_ids = rng.integers(0, 256, (1, cache), dtype=np.int64)
    step_ids = rng.integers(0, 256, (1, 1), dtype=np.int64)
    pasts = {k: s.run(None, decoder_feeds(s, cache_ids))[1:] for k, s in sessions.items()}
    times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            s.run(None, decoder_feeds(s, prefill_ids))  # warm-up
            t = time.perf_counter()
            s.run(None, decoder_feeds(s, prefill_ids))
            times[k]["prefill"].append((time.perf_counter() - t) * 1e3)
            feeds = decoder_feeds(s, step_ids, past=pasts[k])
            s.run(None, feeds)
            t = time.perf_counter()
            for _ in range(decode_steps):
                s.run(None, feeds)
            times[k]["decode"].append((time.perf_counter() - t) * 1e3 / decode_steps)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}


def probe_memory(mode: str, batches: int = 8) -> dict[str, float]:
    """GPTQ w4 g128 of the big model in this process: seconds and peak RSS growth over the loaded model (MiB)."""
    model = big_model()
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 256, (1, 128), generator=gen) for _ in range(batches)]
    before = _rss_mib()
    start = time.perf_counter()
    method = mixq.WeightMethod("gptq", blockwise=mode == "blockwise")
    mixq.quantize(model, "weight_only", bits=4, group_size=128, method=method, calib_data=calib, progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak, "peak_growth_mib": peak - before}


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_comparison() -> dict[str, dict[str, float]]:
    """``probe_memory`` for block-wise and whole-model calibration, each in its own fresh process."""
    out = {}
    for mode in ("blockwise", "whole"):
        res = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_llm.py")), "--probe-memory", mode],
                             capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out
