"""int8 embedding tables: the largest tensors of most language models, quantized per row and looked up as int8."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant import ops
from mixq.quant.spec import QuantSpec
from mixq.quant.weights import quantize_weight


def unsupported_embedding_reason(embedding: nn.Embedding) -> str | None:
    """Why this embedding can't be quantized (None when it can)."""
    if embedding.max_norm is not None:
        return "max_norm renormalises rows at lookup time; the int8 table cannot follow"
    return None


class QuantizedEmbedding(nn.Module):
    """``nn.Embedding`` with a symmetric int8 table and one float32 scale per row (per token).

    Only the looked-up rows are dequantized, so the file shrinks 4x and the lookup stays cheap.
    Example: ``QuantizedEmbedding(nn.Embedding(30522, 384), DEFAULT_WEIGHT)``.
    """

    def __init__(self, embedding: nn.Embedding, spec: QuantSpec) -> None:
        super().__init__()
        per_row = QuantSpec("int8", bits=8, granularity="per_channel", narrow_range=spec.narrow_range)
        q, scale = quantize_weight(embedding.weight, per_row, axis=0)
        self.register_buffer("weight", q)
        self.register_buffer("w_scale", scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return ops.embedding_lookup(indices, self.weight, self.w_scale)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"
