"""Hugging Face layer types that are other layers in disguise, registered by import path (transformers is optional).

GPT-2's ``transformers.pytorch_utils.Conv1D`` (GPT-2, DistilGPT-2, GPT-J's predecessors, many older decoders) is a
Linear layer whose weight is stored transposed (``[in, out]``) and computed with ``addmm``. mixq quantizes it as the
equivalent ``nn.Linear`` in every mode, in QAT and in autoquantize, so it needs no quantized classes of its own.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.modules.registry import register_adapter

CONV1D_PATH = "transformers.pytorch_utils.Conv1D"


def conv1d_as_linear(conv1d: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` computing what a transformers ``Conv1D`` computes (its weight transposed to ``[out, in]``).

    The result remembers the original class name (``mixq_kind``) so summaries still say ``Conv1D``.
    """
    n_in, n_out = conv1d.weight.shape
    weight = conv1d.weight
    linear = nn.Linear(n_in, n_out, bias=conv1d.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if conv1d.bias is not None:
            linear.bias.copy_(conv1d.bias)
    linear.train(conv1d.training)
    linear.mixq_kind = type(conv1d).__name__
    return linear


def register_transformers_layers() -> None:
    """Register the adapters for transformers' layer types (idempotent; importing transformers is not needed)."""
    register_adapter(CONV1D_PATH, conv1d_as_linear)
