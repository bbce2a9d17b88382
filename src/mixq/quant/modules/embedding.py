"""int8 embedding tables: the largest tensors of most language models, quantized per row and looked up as int8."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant import kernels as ops
from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_check, register_qmodule, register_refusal
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import quantize_weight


def per_row_spec(spec: QuantSpec) -> QuantSpec:
    """Tables are symmetric int8 with one scale per row, whatever the weight bits (rows are looked up, not summed)."""
    return QuantSpec("int8", bits=8, granularity="per_channel", narrow_range=spec.narrow_range)


def unsupported_embedding_reason(embedding: nn.Embedding) -> str | None:
    """Why this embedding can't be quantized (None when it can)."""
    if embedding.max_norm is not None:
        return "max_norm renormalises rows at lookup time; the int8 table cannot follow"
    return None


register_check(nn.Embedding, unsupported_embedding_reason)
register_refusal(nn.Embedding, "fp16", "fp16 mode keeps embedding tables float32")


@register_qmodule(nn.Embedding, "static", "dynamic", "weight_only")
class QuantizedEmbedding(FloatFacade):
    """``nn.Embedding`` with a symmetric int8 table and one float32 scale per row (per token).

    Only the looked-up rows are dequantized, so the file shrinks 4x and the lookup stays cheap. Static mode needs
    no activation ranges for it (a lookup has no input range), so it is never wrapped in observers.
    Example: ``QuantizedEmbedding(nn.Embedding(30522, 384), DEFAULT_WEIGHT)``. The int8 table is ``qweight``;
    ``weight`` is the whole float32 table, dequantized on access (for models that read it: DeBERTa's relative
    position table).
    """

    renamed = {"weight": "qweight"}

    observed = False  # static mode does not wrap it in observers

    @classmethod
    def from_float(cls, embedding: nn.Embedding, config: QuantConfig) -> QuantizedEmbedding:
        return cls(embedding, config.weight)

    def __init__(self, embedding: nn.Embedding, spec: QuantSpec) -> None:
        super().__init__()
        q, scale = quantize_weight(embedding.weight, per_row_spec(spec), axis=0)
        self.register_buffer("qweight", q)
        self.register_buffer("w_scale", scale)
        self.expose(embedding)

    def float_weight(self) -> torch.Tensor:
        return ops.dequantize_weight(self.qweight, self.w_scale, 0)

    def describe(self, config: QuantConfig) -> str:
        return "int8 table, per-row scales"

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return ops.embedding_lookup(indices, self.qweight, self.w_scale)

    def extra_repr(self) -> str:
        return f"{self.qweight.shape[0]}, {self.qweight.shape[1]}"
