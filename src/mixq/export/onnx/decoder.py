"""A causal LM that ONNX Runtime serves token by token: ``export_decoder_onnx`` writes a graph with the key/value
cache as inputs (``past.{i}.key``/``past.{i}.value``) and outputs (``present.{i}.key``/``...value``), symbolic
batch, sequence and past length, and whatever mixq put inside (int4 ``MatMulNBits`` for weight-only models).
``generate_onnx`` runs greedy generation through it; ``generate_torch`` runs the same loop in PyTorch.

Prefill passes the prompt with empty (length 0) past tensors; each decode step passes one token per sequence and
the previous step's presents. ``attention_mask`` covers past and current tokens (0 for left padding), and positions
count real tokens only, as Hugging Face's ``generate`` does: a left-padded batch generates what each prompt alone does.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.export.errors import ExportError
from mixq.export.onnx.decoder_checks import check_causal_lm, check_generation, open_session, stamp
from mixq.export.onnx.export import check_target, finalize, refuse_row_rounding, softmax_floor_for, trace_to_onnx
from mixq.quant.finiteness import check_finite
from mixq.quant.modules.observed import refuse_observed
from mixq.report.files import atomic_path

_MAX = 1 << 16


def _cache_shape(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head size) of a Hugging Face decoder config."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        raise TypeError(f"{type(config).__name__} does not describe a decoder (layers, heads, hidden size); pass a "
                        "Hugging Face causal LM such as LlamaForCausalLM or GPT2LMHeadModel")
    return int(layers), int(kv_heads), int(head_dim)


class CachedDecoder(nn.Module):
    """``(input_ids, attention_mask, *past) -> (logits, *present)`` around a Hugging Face causal LM, with flat
    key/value tensors ``[batch, kv_heads, length, head_dim]`` (key then value, per layer) and an attention mask
    ``[batch, past + length]``. A token's position is the number of real tokens before it."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        if not hasattr(lm, "config"):
            raise TypeError(f"{type(lm).__name__} has no .config; pass a Hugging Face causal LM")
        self.lm = lm
        self.layers, self.kv_heads, self.head_dim = _cache_shape(lm.config)
        # transformers 5 renamed the cache argument (past_key_values is deprecated there)
        self._cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"

    def empty_past(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, self.kv_heads, 0, self.head_dim) for _ in range(2 * self.layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                      **{self._cache_arg: cache})
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)

    def io_names(self) -> tuple[list[str], list[str]]:
        kv = [f"{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]
        return ["input_ids", "attention_mask"] + [f"past.{n}" for n in kv], ["logits"] + [f"present.{n}" for n in kv]


def export_decoder_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int | None = None,
                        runtime: str | None = None, softmax_floor: bool | None = None) -> Path:
    """Export a (quantized) Hugging Face causal LM as a key/value-cache decoder ONNX Runtime runs step by step.

    Inputs ``input_ids [batch, sequence]``, ``attention_mask [batch, total_sequence]`` (past + sequence) and the
    cache ``past.{i}.key/value [batch, kv_heads, past_sequence, head_dim]``; outputs ``logits`` and
    ``present.{i}.key/value``. The file is written to a temporary name, loaded by ONNX Runtime as a check, and
    only then renamed to ``path``. ``runtime`` and ``softmax_floor``: as ``export_onnx``'s (causal
    masks are floored for ONNX Runtime on CPUs that compute denormals slowly).
    Example: ``mixq.export_decoder_onnx(mixq.quantize(lm, "weight_only", bits=4), "lm_int4.onnx")``.
    """
    import onnx
    import onnxruntime as ort

    refuse_observed(model, "export")
    check_finite(model, "export")
    refuse_row_rounding(model)
    target = check_target(path)
    floor_softmax = softmax_floor_for(model, runtime, softmax_floor)
    wrapper = CachedDecoder(model.eval())
    check_causal_lm(wrapper, model)
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    past = [torch.zeros(2, wrapper.kv_heads, 4, wrapper.head_dim) for _ in range(2 * wrapper.layers)]
    dim = torch.export.Dim
    batch, seq = dim("batch", min=1, max=_MAX), dim("sequence", min=1, max=_MAX)
    total, past_len = dim("total_sequence", min=1, max=2 * _MAX), dim("past_sequence", min=0, max=_MAX)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: past_len} for _ in past))
    inputs, outputs = wrapper.io_names()
    try:
        with atomic_path(target) as tmp:
            proto = trace_to_onnx(wrapper, (ids, mask, *past), opset=opset, dynamic_shapes=shapes,
                                  input_names=inputs, output_names=outputs, floor_softmax=floor_softmax)
            finalize(proto)
            stamp(proto, model.config)
            onnx.save(proto, tmp)
            ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])  # loads, or nothing is replaced
    except Exception as err:
        raise ExportError(f"could not export {type(model).__name__} as a key/value-cache decoder: {err}") from err
    return target


def decoder_layout(graph: Any) -> dict[str, Any] | None:
    """What an ``export_decoder_onnx`` graph (``onnx.GraphProto``) takes and returns, or None for another graph:
    layers, cache heads and head size, and each input's and output's axes."""

    def axes(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: axes(i) for i in graph.input}
    if "input_ids" not in inputs or "past.0.key" not in inputs:
        return None
    key = inputs["past.0.key"]
    return {"layers": sum(n.startswith("past.") for n in inputs) // 2, "kv_heads": key[1], "head_dim": key[3],
            "inputs": inputs, "outputs": {o.name: axes(o) for o in graph.output}}


def describe_decoder(layout: dict[str, Any]) -> str:
    """One line saying what a :func:`decoder_layout` file is and how to run it."""
    mask = " and attention_mask [batch, past_sequence + sequence]" if "attention_mask" in layout["inputs"] else ""
    return (f"key/value-cache decoder with {layout['layers']} layers: takes input_ids [batch, sequence]{mask} and "
            f"past.{{i}}.key/value [batch, {layout['kv_heads']}, past_sequence, {layout['head_dim']}], returns logits "
            "and present.{i}.key/value; generate with mixq.generate_onnx")


def _check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  max_new_tokens: int) -> torch.Tensor:
    """The prompt's attention mask (ones when none is given), checked: 0/1, shaped like ``input_ids``, left
    padding only (a right-padded row would continue from a padding token), at least one token per row."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise TypeError("input_ids must be a [batch, length] int64 tensor of token ids")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.long()
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
    if (mask[:, 1:] < mask[:, :-1]).any():
        raise ValueError("attention_mask has padding after a prompt's tokens; generation needs left padding "
                         "(tokenizer.padding_side = 'left')")
    if (mask[:, -1] == 0).any():
        raise ValueError("attention_mask has a row without tokens; every prompt needs at least one")
    return mask


def decoder_feeds(session: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                  past: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One step's inputs for an ``export_decoder_onnx`` session, by input name: the token ids, the attention mask
    over past + new tokens (all ones when not given) and the cache (empty when ``past`` is None)."""
    batch, length = input_ids.shape
    past_inputs = [i for i in session.get_inputs() if i.name.startswith("past.")]
    if past is None:
        past = [np.zeros((batch, int(i.shape[1]), 0, int(i.shape[3])), np.float32) for i in past_inputs]
    if attention_mask is None:
        attention_mask = np.ones((batch, (past[0].shape[2] if past else 0) + length), np.int64)
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
             **{i.name: p for i, p in zip(past_inputs, past, strict=True)}}
    names = {i.name for i in session.get_inputs()}
    if "attention_mask" not in names and not attention_mask.all():
        raise ValueError("this decoder file takes no attention_mask (exported before mixq had one), so it cannot "
                         "run padded prompts; export it again with mixq.export_decoder_onnx")
    return {k: v for k, v in feeds.items() if k in names}


def generate_onnx(path_or_session: Any, input_ids: torch.Tensor, max_new_tokens: int,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy generation through an ``export_decoder_onnx`` file (or its ``InferenceSession``): one prefill, then
    one step per new token with the cache. Prompts of different lengths are left-padded, with ``attention_mask``
    0 on the padding. Returns prompt + new tokens, ``[batch, length + max_new_tokens]``."""
    session = open_session(path_or_session)
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
        check_generation(session, input_ids, max_new_tokens)
    mask = _check_prompt(input_ids, attention_mask, max_new_tokens).numpy()
    tokens = input_ids.numpy()
    step, past = tokens, None
    for _ in range(max_new_tokens):
        logits, *past = session.run(None, decoder_feeds(session, step, mask, past))
        step = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        tokens = np.concatenate([tokens, step], axis=1)
        mask = np.concatenate([mask, np.ones_like(step)], axis=1)
    return torch.from_numpy(tokens)


@torch.no_grad()
def generate_torch(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The same greedy loop as ``generate_onnx``, in PyTorch (the reference the ONNX file must reproduce)."""
    mask = _check_prompt(input_ids, attention_mask, max_new_tokens)
    wrapper = CachedDecoder(model.eval())
    past, tokens, step = wrapper.empty_past(input_ids.shape[0]), input_ids, input_ids
    for _ in range(max_new_tokens):
        logits, *past = wrapper(step, mask, *past)
        step = logits[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, step], dim=1)
        mask = torch.cat([mask, torch.ones_like(step)], dim=1)
    return tokens
