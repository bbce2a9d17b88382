"""The benchmark's decoder LM: a byte-level corpus built offline (Python's own standard-library sources), a small
Llama-style model trained on it in a few minutes, and held-out perplexity in PyTorch and in ONNX Runtime."""

from __future__ import annotations

import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mixq.export.onnx.decoder import decoder_feeds

SEQ = 128


def corpus(max_bytes: int = 3_000_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes of the standard library's ``.py`` files (sorted, deterministic): first 90% to train, last 10% held out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    data = torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()
    split = int(len(data) * 0.9)
    return data[:split], data[split:]


def small_config(hidden: int = 128, layers: int = 4, intermediate: int = 384, heads: int = 4) -> LlamaConfig:
    return LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=None, pad_token_id=None)


def windows(data: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - SEQ - 1, (count,), generator=gen)
    return torch.stack([data[s:s + SEQ] for s in starts])


def train(train_data: torch.Tensor, steps: int, cache: Path | None, batch: int = 8) -> tuple[LlamaForCausalLM, dict]:
    """Train (or load from ``cache``) the byte-level LM; returns it and how long training took."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_config())
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval(), {"loaded_from": str(cache)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(1)
    start, loss = time.perf_counter(), float("nan")
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(train_data) - SEQ - 1, (batch,), generator=gen)
        x = torch.stack([train_data[i:i + SEQ] for i in idx])
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = float(out.loss.detach())
        if step % 50 == 0:
            print(f"step {step}/{steps}: loss {loss:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model, {"steps": steps, "batch": batch, "seq": SEQ, "seconds": time.perf_counter() - start,
                   "final_train_loss": loss}


def _nll(logits: np.ndarray, tokens: np.ndarray) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (float64) and the number of predicted tokens."""
    logits = logits[:, :-1].astype(np.float64)
    target = tokens[:, 1:]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, target[..., None], -1)[..., 0]
    return float((logz - picked).sum()), int(target.size)


@torch.no_grad()
def perplexity_torch(model: torch.nn.Module, data: torch.Tensor, batch: int = 16) -> float:
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i:i + batch]
        nll, n = _nll(model(input_ids=x, use_cache=False).logits.numpy(), x.numpy())
        total, count = total + nll, count + n
    return math.exp(total / count)


def perplexity_ort(session, data: torch.Tensor, batch: int = 16) -> float:
    """Perplexity through a key/value-cache decoder file: prefill each window with an empty cache."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i:i + batch].numpy()
        nll, n = _nll(session.run(["logits"], decoder_feeds(session, x))[0], x)
        total, count = total + nll, count + n
    return math.exp(total / count)
