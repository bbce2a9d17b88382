"""Linears with integer weights and a float output: the layers whose input a runtime may round per row at run time.

ONNX Runtime runs a static Linear whose output stays float as MatMulIntegerToFloat (input on its calibrated grid)
and a weight-only Linear as MatMulNBits (input float); LiteRT runs both as XNNPACK's qd8 kernels, which quantize
each input row to int8 at run time. A layer quantized for such a runtime (``Runtime.rounds_float_output_rows``)
has ``rows`` set and simulates that rounding; exporters ask here which layers do.
"""

from __future__ import annotations

from torch import nn

from mixq.quant.modules.static import QuantizedLinear
from mixq.quant.modules.weight_only import WeightOnlyLinear


def float_output_linears(model: nn.Module) -> dict[str, bool]:
    """``{name: rows}`` of ``model``'s Linears with integer weights and a float output (static ones whose output
    stays float, weight-only ones): whether each rounds its input per row (quantized for LiteRT: ``rows``) or as
    ONNX Runtime runs it (on its calibrated grid, or float)."""
    return {name: m.rows for name, m in model.named_modules()
            if isinstance(m, WeightOnlyLinear) or (isinstance(m, QuantizedLinear) and m.y_scale is None)}
