"""One file, several runtimes: mixq's int8 files on ONNX Runtime and OpenVINO against each runtime's fp32 run and
each runtime's own quantizer, for the real all-MiniLM-L6-v2 (seq 128) and a MobileNetV2-style CNN.

Rows are (file, runtime) jobs; every job of a model is timed at each batch size in the same interleaved rounds
(order rotated per round) in this one process, so the machine's load hits them alike; the speed-up column is ORT
fp32's median over the job's. Sessions are what a user writes: ``mixq.export.backend.get_runtime(...).session(path,
threads)`` (ONNX Runtime: threads set, default optimisation; OpenVINO: threads, latency hint, and the precision
hint: ``default`` is OpenVINO's choice, bf16 on CPUs with bf16 instructions; ``f32`` forces float32). NNCF's int8
model (``nncf.quantize`` on the OpenVINO model, transformer preset for MiniLM) is an OpenVINO IR file, run with the
same options. Each runtime runs the files written for it (``export_onnx(runtime=)``): on a CPU that computes
denormals slowly the ONNX Runtime files floor masked Softmax inputs, which OpenVINO's files do not (its fused
attention would lose); ``fp32, no Softmax floor | ort`` is the fp32 file without the floor. Before a job's calls
in a round, ``mixq.report.latency.settle`` lets the previous job's spin-waiting threads park. Fidelity: MiniLM, the
mean (and lowest) cosine between each job's mean-pooled sentence embeddings and fp32 PyTorch's, on evaluation
sentences disjoint from the calibration ones; the CNN (random weights, random images), the cosine between its
logits and fp32 PyTorch's.

Usage::

    PYTHONPATH=src python benchmarks/bench_runtimes.py            # ~15-30 min on 2 busy cores
    PYTHONPATH=src python benchmarks/bench_runtimes.py --quick    # fewer sentences and rounds
    PYTHONPATH=src python benchmarks/bench_runtimes.py --quick --models cnn --profile   # + where the CNN's time goes
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).parent))
import ort_op_profile  # noqa: E402
from bench_transformers import cpu_flags, load_minilm, pooled, sentences  # noqa: E402
from runtime_variants import make_mobilenet, mixq_files, nncf_file, ort_files  # noqa: E402

import mixq  # noqa: E402
from mixq.export.backend import get_runtime  # noqa: E402
from mixq.report.latency import settle  # noqa: E402

OV_RUNTIMES = ("openvino:default", "openvino:f32")


class IRSession:
    """An OpenVINO IR file (NNCF's output) with the options ``mixq``'s OpenVINO sessions use."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision_ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()

    def run(self, output_names: None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feeds)
        return [np.asarray(results[o]) for o in self.compiled.outputs]


def open_job(path: Path, runtime: str, threads: int) -> tuple[Any, str]:
    """A session of ``path`` on ``runtime`` (a ``get_runtime`` name) and the precision it computes floats in."""
    if path.suffix == ".xml":
        session = IRSession(path, threads, runtime.partition(":")[2] or "default")
        return session, session.precision_ran
    rt = get_runtime(runtime)
    session = rt.session(path, threads)
    return session, rt.precision(session) or "f32"


def time_jobs(jobs: dict[str, tuple[Any, dict[str, np.ndarray]]], rounds: int, runs: int) -> dict[str, float]:
    """Median ms per call of every job, ``runs`` calls per round, rounds interleaved with the order rotated."""
    for session, feeds in jobs.values():
        for _ in range(2):
            session.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            session, feeds = jobs[name]
            settle(session, feeds)  # the previous job's spinning threads park; this one's wake (untimed)
            for _ in range(runs):
                start = time.perf_counter()
                session.run(None, feeds)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def outputs(session: Any, feeds: dict[str, np.ndarray], batch: int = 32) -> np.ndarray:
    """The first output over all rows of ``feeds``, ``batch`` rows per call."""
    n = len(next(iter(feeds.values())))
    return np.concatenate([session.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def minilm(args: argparse.Namespace, work: Path) -> tuple[dict[str, dict[str, Path | str]], Any, Any, Any]:
    """MiniLM's files and jobs: {job: {"file": path, "runtime": name}}, evaluation feeds, fidelity function."""
    model, tok = load_minilm(args.seq)
    texts = sentences(args.calib + args.eval)

    calib, evals = tok(texts[:args.calib]), tok(texts[args.calib:])
    chunks = [{k: v[i:i + 16] for k, v in calib.items()} for i in range(0, args.calib, 16)]
    torch_calib = [{k: torch.from_numpy(v) for k, v in c.items()} for c in chunks]
    example = {k: v[:1] for k, v in torch_calib[0].items()}
    fp32 = mixq.export_onnx(model, example, work / "minilm_fp32.onnx")
    fp32_ov = mixq.export_onnx(model, example, work / "minilm_fp32_openvino.onnx", runtime="openvino")
    # static's default smooths (smoothquant="layernorm"): for ORT (the default target) only where the scale folds
    # exactly, for OpenVINO (runtime="openvino") also inside int8 layers; the row without it is the recipe before
    modes = [("mixq static", "static", "layernorm"), ("mixq static for OpenVINO", "static", "layernorm", "openvino"),
             ("mixq static, no SmoothQuant", "static", None), ("mixq dynamic", "dynamic", None)]
    mixq_paths, _ = mixq_files(model, torch_calib, example, work, modes, also_for="openvino")
    ort = ort_files(fp32, chunks, work, transformer=True)
    nncf = nncf_file(fp32_ov, chunks, work, transformer=True)
    with torch.no_grad():
        reference = pooled(torch.cat([model(**{k: torch.from_numpy(v[i:i + 32]) for k, v in evals.items()})
                                      for i in range(0, args.eval, 32)]), evals["attention_mask"])

    def fidelity(hidden: np.ndarray) -> tuple[float, float]:
        cos = (pooled(hidden, evals["attention_mask"]) * reference).sum(1)
        return float(cos.mean()), float(cos.min())

    return _jobs(fp32, mixq_paths, ort, nncf, fp32_ov), evals, fidelity, "input_ids"


def cnn(args: argparse.Namespace, work: Path) -> tuple[dict[str, dict[str, Path | str]], Any, Any, Any]:
    """The MobileNet-style CNN's files and jobs, like :func:`minilm`."""
    model = make_mobilenet(args.image)
    g = torch.Generator().manual_seed(5)
    calib = [torch.randn(8, 3, args.image, args.image, generator=g) for _ in range(4 if args.quick else 8)]
    example = calib[0][:1]
    fp32 = mixq.export_onnx(model, example, work / "cnn_fp32.onnx")
    name = get_runtime("ort").input_names(get_runtime("ort").session(fp32, 1))[0]
    chunks = [{name: c.numpy()} for c in calib]
    mixq_paths, _ = mixq_files(model, calib, example, work, [("mixq static", "static", "layernorm")])
    ort = ort_files(fp32, chunks, work, transformer=False)
    nncf = nncf_file(fp32, chunks, work, transformer=False)
    images = torch.randn(32, 3, args.image, args.image, generator=g)
    with torch.no_grad():
        reference = model(images).double().numpy()

    def fidelity(logits: np.ndarray) -> tuple[float, float]:
        logits = logits.astype(np.float64)
        cos = (logits * reference).sum(1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))
        return float(cos.mean()), float(cos.min())

    return _jobs(fp32, mixq_paths, ort, nncf), {name: images.numpy()}, fidelity, name


def _jobs(fp32: Path, mixq_paths: dict[str, Path], ort: dict[str, Path], nncf: Path,
          fp32_ov: Path | None = None) -> dict[str, dict]:
    """ONNX Runtime runs the files written for it; OpenVINO those written for it (``"<label> @openvino"``, and
    ``fp32_ov``) where they differ, under the ORT file's label."""
    fp32_ov = fp32_ov or fp32
    jobs: dict[str, dict[str, Path | str]] = {"fp32 | ort": {"file": fp32, "runtime": "ort"}}
    if fp32_ov != fp32:
        jobs["fp32, no Softmax floor | ort"] = {"file": fp32_ov, "runtime": "ort"}
    jobs.update({f"{k} | ort": {"file": p, "runtime": "ort"} for k, p in ort.items()})
    own = {k: p for k, p in mixq_paths.items() if " @" not in k}
    jobs.update({f"{k} | ort": {"file": p, "runtime": "ort"} for k, p in own.items()})
    for runtime in OV_RUNTIMES:
        jobs[f"fp32 | {runtime}"] = {"file": fp32_ov, "runtime": runtime}
        jobs[f"NNCF int8 | {runtime}"] = {"file": nncf, "runtime": runtime}
        jobs.update({f"{k} | {runtime}": {"file": mixq_paths.get(f"{k} @openvino", p), "runtime": runtime}
                     for k, p in own.items()})
    return jobs


def measure(name: str, built: tuple, batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    jobs, feeds, fidelity, _ = built
    sessions, rows = {}, {}
    for job, spec in jobs.items():
        sessions[job], precision = open_job(spec["file"], spec["runtime"], args.threads)
        cos, low = fidelity(outputs(sessions[job], feeds))
        rows[job] = {"precision": precision, "cos": round(cos, 5), "min_cos": round(low, 5),
                     "bytes": Path(spec["file"]).stat().st_size}
        print(f"{name} {job}: {precision}, cos {cos:.4f} (min {low:.4f})", flush=True)
    for batch in batches:
        timed = time_jobs({j: (s, {k: v[:batch] for k, v in feeds.items()}) for j, s in sessions.items()},
                          args.rounds, max(1, 16 // batch))
        for job in jobs:
            rows[job][f"b{batch}_ms"] = round(timed[job], 2)
            rows[job][f"b{batch}_x"] = round(timed["fp32 | ort"] / timed[job], 2)
        print(f"{name} b{batch}: " + ", ".join(f"{j} {t:.1f} ms" for j, t in timed.items()), flush=True)
    return rows


def markdown(name: str, rows: dict[str, dict[str, Any]], batches: list[int]) -> list[str]:
    heads = " / ".join(f"b{b}" for b in batches)
    lines = [f"### {name}", "", f"| file | runtime | float precision | cos vs fp32 PyTorch (min) | speed-up over ORT "
             f"fp32, {heads} | ms, {heads} |", "|---|---|---|---:|---:|---:|"]
    for job, row in rows.items():
        file, runtime = job.split(" | ")
        lines.append(f"| {file} | {runtime} | {row['precision']} | {row['cos']:.4f} ({row['min_cos']:.4f}) | "
                     + " / ".join(f"{row[f'b{b}_x']:.2f}x" for b in batches) + " | "
                     + " / ".join(f"{row[f'b{b}_ms']:.1f}" for b in batches) + " |")
    return lines + [""]


def cnn_profile(jobs: dict[str, dict], images: dict[str, np.ndarray], batch: int, threads: int,
                results: dict[str, Any]) -> list[str]:
    """ORT's per-node profile of the CNN's fp32 and mixq static files at ``batch``, by node kind."""
    feeds = {name: array[:batch] for name, array in images.items()}
    fp32 = ort_op_profile.profile(Path(jobs["fp32 | ort"]["file"]), feeds, threads)
    int8 = ort_op_profile.profile(Path(jobs["mixq static | ort"]["file"]), feeds, threads)
    results["cnn_profile"] = {"batch": batch, "fp32": fp32, "mixq static": int8}
    return ort_op_profile.markdown(fp32, int8, f"Where the CNN's time goes in ORT (profiler, batch {batch}, "
                                   f"{threads} threads)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="64 sentences, 3 rounds, 160px images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batches", default="1,32", help="MiniLM batch sizes")
    p.add_argument("--cnn-batches", default="1,8")
    p.add_argument("--models", default="minilm,cnn")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--profile", action="store_true",
                   help="also ORT's per-node profile of the CNN's fp32 and mixq static files (largest CNN batch)")
    args = p.parse_args()
    args.calib, args.eval = (32, 64) if args.quick else (128, 256)
    args.rounds = 3 if args.quick else 6
    args.image = 160 if args.quick else 224
    torch.set_num_threads(args.threads)
    import openvino

    started, load = time.perf_counter(), os.getloadavg()
    flags = cpu_flags()
    head = (f"`bench_runtimes.py{' --quick' if args.quick else ''}`: {args.calib} calibration / {args.eval} evaluation "
            f"sentences, {args.rounds} interleaved rounds. CPU: {flags}; {os.cpu_count()} cores; load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
            f"(1/5/15 min) at the start; {args.threads} threads; onnxruntime {get_runtime('ort').version()}, "
            f"openvino {openvino.__version__.split('-')[0]}, torch {torch.__version__}")
    print(head, flush=True)
    work = Path(tempfile.mkdtemp(prefix="mixq-bench-runtimes-"))
    results: dict[str, Any] = {"cpu": flags, "threads": args.threads, "quick": args.quick, "rounds": args.rounds,
                               "load_start": load}
    lines = [head, ""]
    for name in args.models.split(","):
        build, batches = ((minilm, args.batches) if name == "minilm" else (cnn, args.cnn_batches))
        batches = [int(b) for b in batches.split(",")]
        title = (f"all-MiniLM-L6-v2, seq {args.seq}, {args.eval} sentences" if name == "minilm"
                 else f"MobileNetV2-style CNN (random weights), 3x{args.image}x{args.image}")
        built = build(args, work)
        rows = measure(name, built, batches, args)
        results[name] = rows
        lines += markdown(title, rows, batches)
        if args.profile and name == "cnn":
            lines += cnn_profile(built[0], built[1], max(batches), args.threads, results)
    load = os.getloadavg()
    results["load_end"], results["seconds"] = load, round(time.perf_counter() - started)
    lines.append(f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; took "
                 f"{results['seconds']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtimes.json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(args.out / "runtimes.md", lines)
    print("\n".join(lines))


TITLE = "# Runtimes: mixq's files on ONNX Runtime and OpenVINO (issue 19)"


def write_markdown(path: Path, lines: list[str]) -> None:
    """Put this run on top of ``path`` as a dated section, keeping the earlier runs (and the notes written under
    them) below it: the file is a log of runs on different machines, not one table."""
    earlier = path.read_text() if path.exists() else ""
    earlier = earlier.removeprefix(TITLE).lstrip("\n")
    section = [f"## Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", *lines, ""]
    path.write_text("\n".join([TITLE, "", *section, earlier]).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
