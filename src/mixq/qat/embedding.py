"""QAT for embedding tables: the table trains through its int8 per-row quantization, as post-training quantization
stores it (symmetric int8, one scale per row), so a QAT model of a transformer is as small as the PTQ one."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.modules.embedding import QuantizedEmbedding, per_row_spec
from mixq.quant.modules.facade import Delegating
from mixq.quant.modules.registry import register_qat_module
from mixq.quant.primitives import fake_quantize
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import weight_scale


@register_qat_module(nn.Embedding)
class QATEmbedding(Delegating, nn.Module):
    """``nn.Embedding`` whose table is fake-quantized per row in training (straight-through gradients); in eval mode
    exactly the ``QuantizedEmbedding`` it converts to. Lookups have no activation range, so nothing is observed.
    ``weight`` and the table's other attributes are the float embedding's."""

    mixq_leaf = True  # graph mode keeps it as one module
    learnable, relu, bn, has_data = False, False, None, True

    @classmethod
    def prepare(cls, layer: nn.Embedding, weight_spec: QuantSpec, **_layer_options: object) -> QATEmbedding:
        """Build from the float table (``weight_spec`` sets nothing: tables are 8-bit per row, as in PTQ)."""
        return cls(layer, weight_spec)

    def __init__(self, layer: nn.Embedding, weight_spec: QuantSpec) -> None:
        super().__init__()
        self.layer = layer
        self.spec = per_row_spec(weight_spec)

    @property
    def weight(self) -> torch.Tensor:
        """The table as this layer computes with it, for models that read it whole (DeBERTa's relative positions):
        fake-quantized in training, the converted table's ``weight`` in eval mode (so eval equals ``convert``)."""
        if not self.training:
            return self.to_quantized().weight
        w = self.layer.weight
        scale = weight_scale(w, self.spec, axis=0)
        return fake_quantize(w, scale, torch.zeros(scale.shape, dtype=torch.int8), 0, self.spec.qmin, self.spec.qmax)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.to_quantized()(indices)
        e = self.layer
        return F.embedding(indices, self.weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq,
                           e.sparse)

    def to_quantized(self) -> QuantizedEmbedding:
        """The deployed table: int8 rows with the min-max scale of each row."""
        return QuantizedEmbedding.from_float(self.layer, QuantConfig("static", weight=self.spec))

    def to_float(self) -> nn.Embedding:
        return copy.deepcopy(self.layer)

    def describe(self) -> str:
        return "int8 table, per-row scales (QAT)"

    def extra_repr(self) -> str:
        return f"{self.layer.num_embeddings}, {self.layer.embedding_dim}, w:{self.spec}"
