"""Machine description, target checks and the Markdown report for ``bench_ptq.py`` (rendered from the JSON)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

VNNI_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
SIZE_TARGET = 0.3
INT8_VARIANTS = ("mixq_static", "mixq_dynamic", "ort_static", "ort_dynamic")
LABELS = {
    "pytorch_fp32": "PyTorch fp32 eager",
    "ort_fp32": "ORT fp32",
    "mixq_static": "mixq static int8 (ORT)",
    "mixq_dynamic": "mixq dynamic int8 (ORT)",
    "ort_static": "ORT quantize_static (QDQ)",
    "ort_dynamic": "ORT quantize_dynamic",
}
COUNTERPART = {"mixq_static": "ort_static", "mixq_dynamic": "ort_dynamic"}


def machine_info(repo: Path) -> dict[str, Any]:
    """CPU model and the SIMD flags that decide ORT's int8 kernels, core count and library versions."""
    import onnx
    import onnxruntime
    import torch
    import transformers

    import mixq

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": model,
        "cpu_flags": {f: f in flags for f in VNNI_FLAGS},
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "transformers": transformers.__version__,
        "mixq": mixq.__version__,
        "git_commit": commit,
    }


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's three targets, one entry per (model, batch, variant) they apply to."""
    index = {(r["model"], r["batch"], r["variant"]): r for r in rows}
    out: list[dict[str, Any]] = []

    def add(target: str, row: dict[str, Any], value: float | None, threshold: float, note: str = "") -> None:
        met = None if value is None else value <= threshold
        out.append({"target": target, "model": row["model"], "batch": row["batch"], "variant": row["variant"],
                    "value": value, "threshold": threshold, "met": met, "note": note or row.get("error") or ""})

    for r in rows:
        first_batch = r["batch"] == min(b for (m, b, _) in index if m == r["model"])  # sizes do not depend on batch
        if r["variant"] in INT8_VARIANTS and first_batch:
            add("int8 file <= 0.3x fp32 ONNX file", r, r.get("size_ratio"), SIZE_TARGET)
        if r["variant"] in COUNTERPART:
            add(f"mixq latency <= {COUNTERPART[r['variant']]} latency", r, r.get("ratio_vs_ort_quantizer"), 1.0)
        if r["model"] == "cnn" and r["variant"] == "mixq_static" and r["batch"] == 32:
            add("mixq static CNN faster than ORT fp32 at batch 32", r, r.get("latency_ratio"), 1.0)
    return out


def _f(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_markdown(result: dict[str, Any]) -> str:
    """The whole report as Markdown, built only from the JSON result."""
    m, cfg, load = result["machine"], result["config"], result["load_average_1m"]
    flags = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in m["cpu_flags"].items())
    lines = [
        "# Post-training quantization: mixq vs ONNX Runtime's quantizer",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; flags: {flags}",
        f"- Versions: torch {m['torch']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, "
        f"transformers {m['transformers']}, mixq {m['mixq']} (commit {m['git_commit']}), Python {m['python']}",
        f"- Threads: {cfg['threads']} intra-op (ORT inter-op 1, ORT_ENABLE_ALL, CPUExecutionProvider; "
        f"`torch.set_num_threads({cfg['threads']})` + `inference_mode` for eager)",
        f"- Timing: {cfg['warmup']} warm-up runs (at most 3 at batch >= 32), then {cfg['runs_note']} timed runs per "
        f"row, the variants of one model and batch interleaved in blocks of {cfg['block']} runs; median and p90 of "
        "`time.perf_counter`. Sizes in MB = 10^6 bytes (PyTorch row: bytes of parameters and buffers).",
        f"- Shared machine: other processes ran during the benchmark (1-minute load average {load['start']:.2f} at "
        f"start, {load['end']:.2f} at end, {m['logical_cpus']} CPUs). Before each block of runs the script waits up "
        f"to {cfg['quiet_wait_s']:.0f} s for them to use < {cfg['quiet_share']:.0%} of the CPUs; *busy* is the share "
        "of the CPUs they used during that row's timed runs (from /proc/stat). Rows with a high *busy* are inflated, "
        "PyTorch eager most of all (its two OpenMP threads wait for each other whenever one is descheduled).",
        f"- Calibration (mixq static and ORT quantize_static, identical batches, MinMax): {cfg['calibration_note']}",
        "- Columns: *size x* and *lat x* are relative to the ORT fp32 row of the same model and batch; *vs ORT q* is "
        "mixq's median over ORT's own quantizer's median in the same mode (<= 1.00 means mixq is as fast or "
        "faster); *int/float ops* count integer kernels vs float Conv/MatMul/Gemm nodes in ORT's optimised graph; "
        "*accuracy proxy* is mean |out - fp32| / std(fp32) for the CNN (lower is better) and the mean cosine "
        "similarity of the [CLS] vector vs PyTorch fp32 for BERT (higher is better), on fixed random inputs.",
        f"- Mode: {'QUICK smoke test (small shapes, few runs): not representative' if cfg['quick'] else 'full run'}",
        "",
    ]
    for model in result["models"]:
        info = result["models"][model]
        lines += [f"## {model}: {info['description']}", ""]
        lines += ["| batch | variant | size MB | size x | median ms | p90 ms | lat x | vs ORT q | busy "
                  "| int/float ops | accuracy proxy |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in result["rows"] if r["model"] == model):
            ops = "" if r.get("int_kernels") is None else f"{r['int_kernels']}/{r['float_ops']}"
            vs = _f(r.get("ratio_vs_ort_quantizer"), ".2f") if r["variant"] in COUNTERPART else ""
            acc = _f(r.get("accuracy"), ".4f")
            if r.get("error"):
                lines.append(f"| {r['batch']} | {LABELS[r['variant']]} | n/a | n/a | n/a | n/a | n/a | {vs} | | | "
                             f"failed: see notes |")
                continue
            lines.append(
                f"| {r['batch']} | {LABELS[r['variant']]} | {_f(r['size_mb'], '.2f')} | {_f(r['size_ratio'], '.2f')} "
                f"| {_f(r['median_ms'], '.2f')} | {_f(r['p90_ms'], '.2f')} | {_f(r['latency_ratio'], '.2f')} "
                f"| {vs} | {_f(r.get('others_cpu_share'), '.0%')} | {ops} | {acc} |")
        lines += ["", "ORT optimised graphs (ORT_ENABLE_EXTENDED, via `mixq.optimized_op_types`):", ""]
        for name, v in info["variants"].items():
            if v.get("error"):
                lines.append(f"- {LABELS[name]}: **failed** ({v['error']})")
            elif v.get("compute_ops") is not None:
                ops = ", ".join(f"{k} x{n}" for k, n in sorted(v["compute_ops"].items())) or "none"
                extra = f"; {v['note']}" if v.get("note") else ""
                lines.append(f"- {LABELS[name]}: {ops}{extra}")
        lines.append("")
    lines += ["## Targets", "", "| target | model | batch | variant | value | threshold | met |",
              "|---|---|---:|---|---:|---:|---|"]
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['model']} | {t['batch']} | {LABELS[t['variant']]} "
                     f"| {_f(t['value'], '.2f')} | {t['threshold']:.2f} | {met} |")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
