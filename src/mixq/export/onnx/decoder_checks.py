"""Up-front checks for the key/value-cache decoder: ``export_decoder_onnx`` refuses a model that is not a causal LM
with a cache in one line (instead of an exporter stack trace), and ``generate_onnx`` refuses, before running, a
file that is not such a decoder, an empty prompt, token ids outside the vocabulary and a generation longer than
the model's position table (ONNX Runtime's raw errors otherwise, or silently wrong tokens).

The position limit travels in the file: ``export_decoder_onnx`` records ``max_position_embeddings`` (or
``n_positions``) as the model metadata entry :data:`MAX_POSITIONS_KEY`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

MAX_POSITIONS_KEY = "mixq.max_positions"


def check_causal_lm(wrapper: nn.Module, model: nn.Module) -> None:
    """Run the cache wrapper once on two tokens; a model that cannot (a BERT: no cache, a bidirectional encoder)
    is refused with a TypeError naming it."""
    ids, mask = torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)
    why = ""
    try:
        with torch.no_grad():
            wrapper(ids, mask, *wrapper.empty_past(1))
    except Exception as err:  # noqa: BLE001 - any failure here means the model is not a cached decoder
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = f" ({type(err).__name__}: {lines[0] if lines else ''})"
    if why:
        arch = getattr(getattr(model, "config", None), "architectures", None)
        raise TypeError(f"{type(model).__name__}{f' (saved as {arch[0]})' if arch else ''} is not a causal LM that "
                        f"returns a key/value cache{why}; export_decoder_onnx takes a Hugging Face causal LM such as "
                        "LlamaForCausalLM or GPT2LMHeadModel (use export_onnx for other models)")


def max_positions(config: Any) -> int | None:
    """The model's position table size, when its config says."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def stamp(proto: Any, config: Any) -> None:
    """Record the position limit in the ONNX model's metadata (for :func:`check_generation`)."""
    limit = max_positions(config)
    if limit is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = MAX_POSITIONS_KEY, str(limit)


def open_session(path_or_session: Any) -> Any:
    """An ONNX Runtime session for ``path_or_session``; a ValueError in one line when the file cannot load."""
    import onnxruntime as ort

    if isinstance(path_or_session, ort.InferenceSession):
        return path_or_session
    if not isinstance(path_or_session, (str, os.PathLike)) or not os.path.isfile(path_or_session):
        raise ValueError(f"{path_or_session!r} is not an ONNX file or an onnxruntime.InferenceSession")
    try:
        return ort.InferenceSession(str(path_or_session), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ValueError(f"ONNX Runtime cannot load {str(path_or_session)!r} ({str(err).splitlines()[0]})") from err


def check_generation(session: Any, input_ids: torch.Tensor, max_new_tokens: int) -> None:
    """Refuse what would fail (or go silently wrong) inside ONNX Runtime: a file that is not an
    ``export_decoder_onnx`` decoder, an empty prompt, ids outside the vocabulary, too many positions."""
    names = [i.name for i in session.get_inputs()]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if "input_ids" not in names or not any(n.startswith("past.") for n in names) or "logits" not in outputs:
        raise ValueError(f"this ONNX file is not a key/value-cache decoder (inputs {names[:4]}); generate_onnx runs "
                         "files written by mixq.export_decoder_onnx")
    if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"the prompt is empty (input_ids shaped {tuple(input_ids.shape)}); pass at least one token "
                         "per row, e.g. the tokenizer's beginning-of-text token")
    vocab = outputs["logits"][-1] if outputs["logits"] else None
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or (isinstance(vocab, int) and high >= vocab):
        raise ValueError(f"input_ids hold token id {low if low < 0 else high}, outside the vocabulary "
                         f"(0..{vocab - 1 if isinstance(vocab, int) else '?'}); tokenize with this model's tokenizer")
    limit = session.get_modelmeta().custom_metadata_map.get(MAX_POSITIONS_KEY)
    if limit is not None and input_ids.shape[1] + max_new_tokens > int(limit):
        raise ValueError(f"a prompt of {input_ids.shape[1]} tokens plus max_new_tokens={max_new_tokens} runs past the "
                         f"model's {limit} positions; pass max_new_tokens <= {max(int(limit) - input_ids.shape[1], 0)} "
                         "or a shorter prompt")
