"""Running a LiteRT key/value-cache decoder (``export_decoder_tflite``): a session that keeps the cache and the
position between calls, and ``generate_tflite``, greedy generation like ``generate_onnx``.

A prompt is fed to ``prefill`` in chunks of its fixed length, the last chunk padded at the end with token 0
(padding sits after every real token, so the causal mask hides it from them, and the decode steps overwrite its
cache rows before anything attends to them); each new token then goes through ``decode``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from mixq.export.tflite.decoder import SIGNATURES, cache_names


class TFLiteDecoderSession:
    """One sequence's state in a decoder file: its cache and the next position.

    Example: ``s = TFLiteDecoderSession("lm.tflite"); logits = s.prefill([1, 2, 3]); logits = s.decode(7)``.
    """

    def __init__(self, path_or_content: str | os.PathLike | bytes, threads: int | None = None) -> None:
        from mixq.export.tflite.interpreter import make_interpreter

        content = path_or_content if isinstance(path_or_content, bytes) else None
        path = None if content is not None else str(path_or_content)
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{path!r} is not a file; pass a .tflite written by mixq.export_decoder_tflite")
        self.interpreter = make_interpreter(path=path, content=content, threads=2 if threads is None else threads)
        found = self.interpreter.get_signature_list()
        if not all(name in found for name in SIGNATURES) or "tokens" not in found["decode"]["inputs"]:
            raise ValueError(f"this .tflite file has signatures {sorted(found)}, not a key/value-cache decoder's "
                             f"{list(SIGNATURES)}; generate_tflite runs files written by mixq.export_decoder_tflite")
        self.runners = {name: self.interpreter.get_signature_runner(name) for name in SIGNATURES}
        inputs = self.runners["prefill"].get_input_details()
        self.prefill_len = int(inputs["tokens"]["shape"][1])
        self.names = [n for n in cache_names(len(inputs) // 2) if n in inputs]
        self.cache_shape = tuple(int(d) for d in inputs[self.names[0]]["shape"])
        self.cache_len = self.cache_shape[2]
        self.vocab = int(self.runners["decode"].get_output_details()["logits"]["shape"][-1])
        self.reset()

    def reset(self) -> None:
        """Forget the sequence: an empty cache, position 0."""
        self.cache = {n: np.zeros(self.cache_shape, np.float32) for n in self.names}
        self.position = 0

    def _run(self, signature: str, tokens: np.ndarray) -> np.ndarray:
        pos = np.arange(self.position, self.position + tokens.shape[1], dtype=np.int32)
        out = self.runners[signature](tokens=tokens.astype(np.int32), input_pos=pos, **self.cache)
        self.cache = {n: out[n] for n in self.names}
        return out["logits"][0]

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Feed a prompt (its ids) after what the session holds; the next-token logits ``[vocab]``."""
        if not tokens:
            raise ValueError("the prompt is empty; pass at least one token")
        if self.position + len(tokens) + 1 > self.cache_len:
            raise ValueError(f"{self.position + len(tokens)} tokens fill the file's cache of {self.cache_len} "
                             "positions; export with a larger cache_len or pass a shorter prompt")
        logits = None
        for start in range(0, len(tokens), self.prefill_len):
            chunk = tokens[start:start + self.prefill_len]
            if self.position + self.prefill_len > self.cache_len:  # no room for a padded chunk: token by token
                for t in chunk:
                    logits = self.decode(t)
                continue
            padded = np.zeros((1, self.prefill_len), np.int64)
            padded[0, :len(chunk)] = chunk
            logits = self._run("prefill", padded)[len(chunk) - 1]
            self.position += len(chunk)
        return logits

    def decode(self, token: int) -> np.ndarray:
        """Feed one token; the next-token logits ``[vocab]``."""
        if self.position >= self.cache_len:
            raise ValueError(f"the file's cache of {self.cache_len} positions is full; export with a larger "
                             "cache_len or generate fewer tokens")
        logits = self._run("decode", np.array([[token]], np.int64))[-1]
        self.position += 1
        return logits


def decoder_layout_tflite(path: str | os.PathLike) -> dict[str, Any]:
    """What an ``export_decoder_tflite`` file takes: layers, cache heads, head size, cache and prefill lengths."""
    s = TFLiteDecoderSession(path, threads=1)
    return {"signatures": list(SIGNATURES), "layers": len(s.names) // 2, "kv_heads": s.cache_shape[1],
            "head_dim": s.cache_shape[3], "cache_len": s.cache_len, "prefill_len": s.prefill_len, "vocab": s.vocab}


def describe_decoder_tflite(layout: dict[str, Any]) -> str:
    """One line saying what a :func:`decoder_layout_tflite` file is and how to run it."""
    return (f"LiteRT key/value-cache decoder with {layout['layers']} layers: signatures prefill "
            f"({layout['prefill_len']} tokens) and decode (1 token) over a cache of {layout['cache_len']} positions "
            f"(kv_cache_{{k,v}}_{{i}} [1, {layout['kv_heads']}, {layout['cache_len']}, {layout['head_dim']}]); "
            "generate with mixq.generate_tflite")


def generate_tflite(path_or_session: Any, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy generation through an ``export_decoder_tflite`` file (or its ``TFLiteDecoderSession``), like
    ``generate_onnx``: rows are generated one after another (the file runs batch 1), each without its left
    padding (``attention_mask`` 0); returns prompt + new tokens, ``[batch, length + max_new_tokens]``.

    Example: ``mixq.generate_tflite("lm_int4.tflite", torch.tensor([[1, 2, 3]]), max_new_tokens=8)``."""
    from mixq.export.onnx.decoder import _check_prompt

    session = path_or_session if isinstance(path_or_session, TFLiteDecoderSession) \
        else TFLiteDecoderSession(path_or_session)
    mask = _check_prompt(input_ids, attention_mask, max_new_tokens)
    if input_ids.numel() == 0:
        raise ValueError(f"the prompt is empty (input_ids shaped {tuple(input_ids.shape)}); pass at least one token")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= session.vocab:
        raise ValueError(f"input_ids hold token id {low if low < 0 else high}, outside the vocabulary "
                         f"(0..{session.vocab - 1}); tokenize with this model's tokenizer")
    if int(mask.sum(1).max()) + max_new_tokens > session.cache_len:
        raise ValueError(f"a prompt of {int(mask.sum(1).max())} tokens plus max_new_tokens={max_new_tokens} runs "
                         f"past the file's cache of {session.cache_len} positions; export with a larger cache_len")
    rows = []
    for ids, keep in zip(input_ids, mask, strict=True):
        session.reset()
        logits, new = session.prefill(ids[keep.bool()].tolist()), []
        for step in range(max_new_tokens):
            new.append(int(np.argmax(logits)))
            if step + 1 < max_new_tokens:
                logits = session.decode(new[-1])
        rows.append(torch.cat([ids, torch.tensor(new, dtype=ids.dtype)]))
    return torch.stack(rows)
