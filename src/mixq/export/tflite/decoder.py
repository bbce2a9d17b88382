"""A causal LM that LiteRT serves token by token: ``prefill`` and ``decode`` signatures over a fixed-size key/value
cache passed in and returned as plain tensors (the layout of litert-torch's generative examples, batch 1).

Each signature takes ``tokens [1, T]`` (int32), ``input_pos [T]`` (int32, the tokens' positions) and the cache
``kv_cache_{k,v}_{i} [1, kv_heads, max_len, head_dim]``, and returns ``logits [1, T, vocab]`` and the updated
cache under the same names. ``prefill`` takes ``T = prefill_len`` tokens (a shorter prompt is padded at the end:
padding sits after every real token, so the causal mask hides it, and later steps overwrite its cache rows),
``decode`` one. The attention mask is made in the graph from ``input_pos``: token ``t`` sees cache rows
``<= input_pos[t]``. The cache rows are written by a one-hot product, exact in float (``x * 1 + 0``).

The Hugging Face model's own forward runs inside (its rotary embedding, attention and MLP), with a 4-D mask
(Hugging Face passes such a mask through as given) and a cache object whose ``update`` writes the rows.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.export.errors import ExportError
from mixq.export.onnx.decoder import CachedDecoder, _cache_shape
from mixq.export.onnx.decoder_checks import check_causal_lm
from mixq.messages import first_line
from mixq.report.files import atomic_path

log = logging.getLogger(__name__)

SIGNATURES = ("prefill", "decode")
DEFAULT_CACHE = 256


def cache_names(layers: int) -> list[str]:
    """The cache's input (and output) names: key then value, per layer."""
    return [f"kv_cache_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]


class _FixedCache:
    """The Hugging Face cache interface (``update``) over fixed-size tensors: rows ``input_pos`` of layer ``i``
    become the new keys / values, and the whole buffer is attended to (under the mask)."""

    def __init__(self, tensors: list[torch.Tensor], write: torch.Tensor) -> None:
        self.tensors, self.write = list(tensors), write  # write: [T, max_len] one-hot rows

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = 1.0 - self.write.sum(0)[:, None]  # [max_len, 1]: 0 on written rows
        out = []
        for j, new in ((2 * layer_idx, key), (2 * layer_idx + 1, value)):
            placed = torch.matmul(self.write.t(), new)  # [1, heads, max_len, head_dim]
            self.tensors[j] = self.tensors[j] * keep + placed
            out.append(self.tensors[j])
        return out[0], out[1]


class FixedCacheDecoder(nn.Module):
    """``(tokens, input_pos, *kv_cache) -> (logits, *kv_cache)`` around a Hugging Face causal LM (batch 1)."""

    def __init__(self, lm: nn.Module, max_len: int) -> None:
        super().__init__()
        if not hasattr(lm, "config"):
            raise TypeError(f"{type(lm).__name__} has no .config; pass a Hugging Face causal LM")
        self.lm, self.max_len = lm, int(max_len)
        self.layers, self.kv_heads, self.head_dim = _cache_shape(lm.config)
        self._cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def empty_cache(self) -> list[torch.Tensor]:
        return [torch.zeros(1, self.kv_heads, self.max_len, self.head_dim) for _ in range(2 * self.layers)]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows = torch.arange(self.max_len, dtype=input_pos.dtype)
        write = (rows[None, :] == input_pos[:, None]).to(torch.float32)  # [T, max_len]
        visible = rows[None, :] <= input_pos[:, None]
        mask = torch.where(visible, 0.0, torch.finfo(torch.float32).min)[None, None]  # [1, 1, T, max_len]
        cache = _FixedCache(list(kv), write)
        out = self.lm(input_ids=tokens.long(), attention_mask=mask, position_ids=input_pos.long()[None],
                      use_cache=True, **{self._cache_arg: cache})
        return (out.logits, *cache.tensors)

    def signature_inputs(self, length: int, start: int = 0) -> dict[str, torch.Tensor]:
        """Example inputs of a signature taking ``length`` tokens from position ``start`` (empty cache)."""
        tokens = torch.arange(1, length + 1, dtype=torch.int32)[None] % 2
        return {"tokens": tokens, "input_pos": torch.arange(start, start + length, dtype=torch.int32),
                **dict(zip(cache_names(self.layers), self.empty_cache(), strict=True))}


class _Named(nn.Module):
    """The decoder with named inputs and outputs (the file's signature names)."""

    def __init__(self, decoder: FixedCacheDecoder) -> None:
        super().__init__()
        self.decoder, self.names = decoder, cache_names(decoder.layers)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor, **kv: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, *cache = self.decoder(tokens, input_pos, *(kv[n] for n in self.names))
        return {"logits": logits, **dict(zip(self.names, cache, strict=True))}


def _check_sizes(model: nn.Module, cache_len: int | None, prefill_len: int) -> int:
    """The cache length (default: 256, or the model's positions if fewer), checked with ``prefill_len``."""
    from mixq.export.onnx.decoder_checks import max_positions

    limit = max_positions(getattr(model, "config", None))
    if cache_len is None:
        cache_len = min(DEFAULT_CACHE, limit or DEFAULT_CACHE)
        prefill_len = min(prefill_len, cache_len)
    for name, value in (("cache_len", cache_len), ("prefill_len", prefill_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if prefill_len > cache_len:
        raise ValueError(f"prefill_len={prefill_len} is longer than the cache (cache_len={cache_len})")
    if limit is not None and cache_len > limit:
        raise ValueError(f"cache_len={cache_len} runs past the model's {limit} positions; pass cache_len <= {limit}")
    return cache_len


def refuse_layers(model: nn.Module) -> str:
    """The LiteRT mode of ``model``'s quantized layers for a decoder file (``weight_only`` or ``float32``), or
    ExportError naming the first layer a decoder file cannot hold (int8 embedding tables fit either)."""
    from mixq.export.tflite.lowering import lowering_of
    from mixq.export.tflite.weight_only import refuse_weight_only
    from mixq.quant.modules import WeightOnlyLinear
    from mixq.quant.modules.registry import quantized_classes

    refuse_weight_only(model)
    for name, module in model.named_modules():
        rule = lowering_of(module)
        if isinstance(module, quantized_classes()) and (rule is None or rule.mode not in (None, "weight_only")):
            kind = "no LiteRT form" if rule is None else "no decoder .tflite form yet"
            raise ExportError(f"layer {name!r} ({type(module).__name__}) has {kind}; a LiteRT decoder takes "
                              "weight-only Linear layers (mixq.quantize(lm, 'weight_only', ...)) or fp32")
    return "weight_only" if any(isinstance(m, WeightOnlyLinear) for m in model.modules()) else "float32"


def export_decoder_tflite(model: nn.Module, path: str | os.PathLike, *, cache_len: int | None = None,
                          prefill_len: int = 32) -> Path:
    """Write a (weight-only quantized, or float) Hugging Face causal LM as a LiteRT key/value-cache decoder.

    The file has two signatures, ``prefill`` (``prefill_len`` tokens) and ``decode`` (one token), over a cache of
    ``cache_len`` positions (default 256, or the model's position table if smaller; attention runs over the whole
    cache, so a longer one makes each step slower; the layout is in the module docstring); ``mixq.generate_tflite``
    runs it. mixq's weight-only layers become LiteRT integer-weight layers (``mixq.export.tflite.weight_only``:
    int8 per-channel, int4 per-channel or in blocks of 32-256); quantized with ``runtime="litert"``, mixq's model
    computes what those layers do (one warning says so of a model quantized without it). Before the file replaces
    ``path``, a prompt is run through it and through mixq's PyTorch model: logits further from mixq's weights at
    float activations than mixq's model rounding activations as LiteRT does, plus 4/255 relative RMS, refuse it
    (``ExportError``, :func:`check_decoder`; a model quantized for LiteRT is also compared with itself).

    Example: ``mixq.export_decoder_tflite(mixq.quantize(lm, "weight_only", bits=4, runtime="litert"), "lm.tflite")``.
    """
    from mixq.export.tflite.converter import captured_output
    from mixq.export.tflite.export import checked_target, say_hybrids_differ
    from mixq.export.tflite.lowering import lower

    target = checked_target(model, path)
    cache_len = _check_sizes(model, cache_len, prefill_len)
    prefill_len = min(prefill_len, cache_len)
    mode = refuse_layers(model)
    say_hybrids_differ(model)
    check_causal_lm(CachedDecoder(model.eval()), model)
    log_text: list[str] = []
    try:
        with atomic_path(target) as tmp, warnings.catch_warnings(), captured_output(log_text):
            warnings.simplefilter("ignore")
            lowered = lower(model)[0]
            content = _convert(lowered, cache_len, prefill_len)
            error = check_decoder(content, model, lowered)
            tmp.write_bytes(content)
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"could not convert {type(model).__name__} to a LiteRT key/value-cache decoder: "
                          f"{first_line(err)}") from err
    log.info("exported %s to %s (%s decoder, %.3f MB, logits %.2g relative RMS off mixq's simulation)",
             type(model).__name__, target, mode, target.stat().st_size / 1e6, error)
    return target


def _convert(lowered: nn.Module, cache_len: int, prefill_len: int) -> bytes:
    """The decoder's ``.tflite`` bytes (of the ``lower``-ed model): both signatures converted, weight-only layers
    stored as integers."""
    from mixq.export.tflite.weight_only import WeightOnlyWeights, store_weight_only
    from mixq.quiet import import_quietly

    litert_torch = import_quietly("litert_torch")
    from litert_torch._config import config

    config.show_progress = False
    named = _Named(FixedCacheDecoder(lowered, cache_len)).eval()
    converted = litert_torch.signature("prefill", named, sample_kwargs=named.decoder.signature_inputs(prefill_len)) \
        .signature("decode", named, sample_kwargs=named.decoder.signature_inputs(1, prefill_len)).convert()
    content = converted.model_content()
    layers = [m for m in lowered.modules() if isinstance(m, WeightOnlyWeights)]
    return store_weight_only(content, layers) if layers else content


def _logits(model: nn.Module, prompt: torch.Tensor, steps: int, tokens: list[int] | None = None
            ) -> list[np.ndarray]:
    """Next-token logits of ``model`` after ``prompt`` and after each of ``steps`` next tokens (PyTorch, with the
    cache: the loop of ``generate_torch``): its own greedy tokens, or ``tokens`` when given (so that two models
    whose near-tied logits pick different tokens are still compared on the same sequence)."""
    wrapper = CachedDecoder(model.eval())
    mask, out = torch.ones_like(prompt), []
    with torch.no_grad():
        logits, *past = wrapper(prompt, mask, *wrapper.empty_past(1))
        for step in range(steps + 1):
            out.append(logits[0, -1].numpy())
            token = logits[:, -1:].argmax(-1) if tokens is None else torch.tensor([[tokens[step]]])
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            logits, *past = wrapper(token, mask, *past)
    return out


def _file_logits(session: Any, prompt: torch.Tensor, tokens: list[int]) -> list[np.ndarray]:
    """The file's next-token logits after ``prompt`` and after each of ``tokens`` but the last (as ``_logits``)."""
    got = [session.prefill(prompt[0].tolist())]
    for token in tokens[:-1]:
        got.append(session.decode(token))
    if not all(np.isfinite(g).all() for g in got):
        raise ExportError("the converted decoder produced non-finite logits; nothing was written")
    return got


def _worst(pairs: Any) -> tuple[float, float]:
    """The (disagreement, bound) pair furthest past its bound (or closest to it)."""
    return max(pairs, key=lambda pair: pair[0] - pair[1])


def computes_as_litert(model: nn.Module) -> bool:
    """Whether ``model`` has weight-only Linears and every one rounds its input per row as LiteRT's kernels do, with
    the scales the file holds (quantized with ``runtime="litert"``): mixq's simulation is then the file's
    arithmetic, to float32 rounding."""
    from mixq.quant.modules import WeightOnlyLinear

    rows = [m.rows for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    return bool(rows) and all(rows)


def check_decoder(content: bytes, model: nn.Module, lowered: nn.Module, steps: int = 3) -> float:
    """Run a short prompt and ``steps`` greedy tokens through the file and through mixq's model; refuse a file
    whose logits are further from the ``lowered`` model at float activations (blockwise scales rounded as the file
    stores them) than that model with activations rounded as LiteRT rounds them (``row_quantized_activations``)
    is, plus ``TOLERANCE`` (``check.allowed``: the file rounds the same rows, but a last-bit difference of its float
    operators on a rounding tie makes it round later layers independently; see ``mixq.export.tflite.check``).
    A model quantized for LiteRT (:func:`computes_as_litert`) computes what the file does, so the file must also be
    as close to it as the model is to itself with its activations moved in the last bit (``check.last_bit_moves``),
    plus ``TOLERANCE``: on a trained decoder, whose rows seldom sit on rounding ties, that is ``TOLERANCE`` and the
    file is ~1e-7 off. Returns the largest disagreement with mixq's own simulation."""
    from mixq.export.tflite.check import TOLERANCE, allowed, disagreement, last_bit_moves
    from mixq.export.tflite.decoder_run import TFLiteDecoderSession
    from mixq.export.tflite.weight_only import row_quantized_activations

    session = TFLiteDecoderSession(content, threads=1)
    vocab = int(getattr(model.config, "vocab_size", 2))
    prompt = torch.arange(3, 3 + min(5, session.prefill_len), dtype=torch.long)[None] % vocab
    simulated = _logits(model, prompt, steps)
    tokens = [int(np.argmax(want)) for want in simulated]  # the file and the references follow the simulation's
    reference = _logits(lowered, prompt, steps, tokens)
    with row_quantized_activations(lowered):
        rounded = _logits(lowered, prompt, steps, tokens)
    got = _file_logits(session, prompt, tokens)
    worst, bound = _worst((disagreement(g, f), allowed(r, f)) for g, r, f in zip(got, rounded, reference, strict=True))
    if worst > bound:
        raise ExportError(f"the converted decoder's logits are {worst:.1%} relative RMS off mixq's weights at float "
                          f"activations, where mixq's model with activations rounded as LiteRT rounds them is "
                          f"{bound - TOLERANCE:.1%} off (tolerance {bound:.1%}); nothing was written")
    if computes_as_litert(model):
        with last_bit_moves(model):
            moved = _logits(model, prompt, steps, tokens)
        worst, bound = _worst((disagreement(g, w), allowed(m, w)) for g, m, w in zip(got, moved, simulated,
                                                                                     strict=True))
        if worst > bound:
            raise ExportError(f"the converted decoder's logits are {worst:.2g} relative RMS off mixq's model, which "
                              "computes as LiteRT does and moves "
                              f"{bound - TOLERANCE:.2g} when its activations change in the last bit (tolerance "
                              f"{bound:.2g}); nothing was written")
    return max(disagreement(g, w) for g, w in zip(got, simulated, strict=True))
