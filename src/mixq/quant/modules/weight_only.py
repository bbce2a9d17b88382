"""Weight-only ("hybrid") layers: integer weights in the file, float activations and float compute (or, quantized for
a runtime whose integer-weight kernels round their input per row, LiteRT, activations rounded as they do)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mixq.quant import kernels as ops
from mixq.quant.modules.conv_args import Int8WeightConv
from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_qmodule
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weight_only.grid import Grid, pack_matmul_nbits, unpack_matmul_nbits
from mixq.quant.weight_only.layers import in_out_features, weight_matrix
from mixq.quant.weights import float_bias

if TYPE_CHECKING:
    from mixq.export.backend import Runtime

GroupParams = tuple[torch.Tensor, torch.Tensor]  # scale, zero point: float32 [out_features, groups]


def block_size(spec: QuantSpec, in_features: int) -> int:
    """MatMulNBits wants a power-of-two block >= 16; per-channel uses one block covering all of K."""
    if spec.granularity == "per_group":
        return int(spec.group_size)  # type: ignore[arg-type]
    return max(16, 1 << (in_features - 1).bit_length())


def grid_of(spec: QuantSpec, in_features: int) -> Grid:
    """The group grid a weight-only layer with ``in_features`` inputs quantizes onto under ``spec``."""
    return Grid(spec.bits, block_size(spec, in_features), spec.symmetric)


@register_qmodule(nn.Linear, "weight_only")
class WeightOnlyLinear(FloatFacade):
    """Linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) with 2/3/4/8-bit group-wise weights, running as ONNX
    Runtime's MatMulNBits (zero points for asymmetric grids; 3-bit codes in the 4-bit layout).

    ``params`` are the (scale, zero point) per group a calibration method chose (GPTQ, AWQ's clipping); the
    default is the min-max range of each group (round to nearest).

    ``runtime`` (a ``mixq.export.backend.Runtime``: ``QuantConfig.runtime``) makes the layer compute what that
    runtime's kernel does, where it differs: its scales are held as the runtime's files hold them
    (``Runtime.stored_scales``: LiteRT's blockwise scales in bfloat16), and with ``rows`` (a runtime that
    ``rounds_float_output_rows``: LiteRT's integer-weight FULLY_CONNECTED) its input is rounded to int8 per row at
    run time (``kernels.matmul_nbits_rows``) instead of staying float (ONNX Runtime's MatMulNBits).

    Example: ``WeightOnlyLinear(nn.Linear(512, 512), QuantSpec(bits=4, granularity="per_group", group_size=32))``.
    """

    @classmethod
    def from_float(cls, linear: nn.Module, config: QuantConfig, params: GroupParams | None = None
                   ) -> WeightOnlyLinear:
        """``params``: the group scales and zero points a calibration method chose (GPTQ, AWQ)."""
        layer = cls(linear, config.weight, params, runtime=config.target_runtime())
        layer.method = str(config.method)
        return layer

    def describe(self, config: QuantConfig) -> str:
        k, block = self.in_features, self.block_size
        padded = f" (K={k} zero-padded to {-(-k // block) * block})" if k % block else ""
        rows = f" (input rounded per row, scales as the file holds them, as {config.runtime} runs it)" \
            if self.rows else ""
        return f"weight_only w:{config.weight} {config.method}{padded}{rows}"

    def __init__(self, linear: nn.Module, spec: QuantSpec, params: GroupParams | None = None,
                 runtime: Runtime | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_out_features(linear)
        grid = grid_of(spec, self.in_features)
        self.block_size, self.code_bits, self.symmetric = grid.group_size, grid.bits, grid.symmetric
        weight = weight_matrix(linear).detach()
        scale, zero = params if params is not None else grid.params(weight)
        if runtime is not None:
            scale = runtime.stored_scales(scale.to(torch.float32))
        self.rows = runtime is not None and runtime.rounds_float_output_rows
        packed, zero_points, self.bits = pack_matmul_nbits(grid, grid.quantize_matrix(weight, scale, zero), zero)
        self.register_buffer("packed", packed)
        self.register_buffer("scales", scale.reshape(-1).to(torch.float32).contiguous())
        self.register_buffer("zero_points", zero_points)
        self.register_buffer("bias", float_bias(linear))
        self.expose(linear)

    def float_weight(self) -> torch.Tensor:
        return unpack_matmul_nbits(self.packed, self.scales, self.zero_points, self.bits, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = ops.matmul_nbits_rows if self.rows else ops.matmul_nbits
        return op(x, self.packed, self.scales, self.zero_points, self.bias, self.in_features, self.bits,
                  self.block_size)

    def extra_repr(self) -> str:
        layout = "" if self.bits == self.code_bits else f" (in {self.bits}-bit layout)"
        rows = ", input rounded per row at run time" if self.rows else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.code_bits}{layout}, "
                f"block_size={self.block_size}, {'symmetric' if self.symmetric else 'zero points'}{rows}")


@register_qmodule((nn.Conv1d, nn.Conv2d), "weight_only")
class WeightOnlyConv(Int8WeightConv):
    """Conv1d/Conv2d with per-channel int8 weights dequantized at run time (ONNX: DequantizeLinear -> Conv)."""

    @classmethod
    def refusal(cls, conv: nn.Module, config: QuantConfig) -> str | None:
        w = config.weight
        if w.bits != 8 or not w.symmetric:
            return (f"{w.bits}-bit {'' if w.symmetric else 'asymmetric '}weight-only covers Linear layers "
                    "(MatMulNBits); use symmetric bits=8 for convolutions")
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.geometry.apply(x, ops.dequantize_weight(self.qweight, self.w_scale, 0), self.bias)
