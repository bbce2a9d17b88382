"""Static int8 layers: activations quantized with calibrated scales, int8 weights, integer accumulation."""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant import kernels as ops
from mixq.quant.modules.conv_args import ConvGeometry
from mixq.quant.modules.facade import FloatFacade
from mixq.quant.modules.registry import register_qmodule
from mixq.quant.primitives import dequantize
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import float_bias, quantize_bias, quantize_weight

QParams = tuple[torch.Tensor, torch.Tensor]


def _float_copy(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class _StaticBase(FloatFacade):
    relu_max: float | None = None

    @classmethod
    def from_float(cls, layer: nn.Module, config: QuantConfig, x_qparams: QParams, y_qparams: QParams | None,
                   relu: bool = False, w_scale: torch.Tensor | None = None,
                   relu_max: float | None = None) -> _StaticBase:
        """The static layer for float ``layer`` with calibrated (or QAT-learned) activation parameters.
        ``relu_max`` records a fused ReLU6's bound (the output grid ends at or below it; QAT starting from this
        layer keeps clamping there)."""
        layer_q = cls(layer, config.weight, x_qparams, y_qparams, relu=relu, w_scale=w_scale)
        layer_q.relu_max = relu_max
        return layer_q

    def _set_activation_qparams(self, x_qparams: QParams, y_qparams: QParams | None) -> None:
        """Input and output grids; ``y_qparams=None`` (graph mode, Linear only) leaves the output float."""
        self.register_buffer("x_scale", x_qparams[0].clone())
        self.register_buffer("x_zp", x_qparams[1].clone())
        self.register_buffer("y_scale", None if y_qparams is None else y_qparams[0].clone())
        self.register_buffer("y_zp", None if y_qparams is None else y_qparams[1].clone())


@register_qmodule((nn.Conv1d, nn.Conv2d), "static")
class QuantizedConv(_StaticBase):
    """Conv1d/Conv2d (BatchNorm and ReLU already folded in) running as ONNX Runtime's QLinearConv.

    Example: ``QuantizedConv(conv, DEFAULT_WEIGHT, (x_scale, x_zp), (y_scale, y_zp), relu=True)``. ``w_scale``
    overrides the min-max weight scale (QAT's learned scales). The int8 weight is ``qweight``; ``weight`` is its
    float32 dequantization (``facade``).
    """

    renamed = {"weight": "qweight"}

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, weight_spec: QuantSpec, x_qparams: QParams,
                 y_qparams: QParams, relu: bool = False, w_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self._set_activation_qparams(x_qparams, y_qparams)
        q, w_scale = quantize_weight(conv.weight, weight_spec, axis=0, scale=w_scale)
        self.register_buffer("qweight", q)
        self.register_buffer("w_scale", w_scale)
        bias = None if conv.bias is None else quantize_bias(conv.bias, self.x_scale, w_scale)
        self.register_buffer("bias", bias)
        self.geometry = ConvGeometry.of(conv)
        self.relu = relu
        self.expose(conv)

    def float_weight(self) -> torch.Tensor:
        return ops.dequantize_weight(self.qweight, self.w_scale, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        return ops.qconv(x, self.x_scale, self.x_zp, self.qweight, self.w_scale, self.bias, self.y_scale, self.y_zp,
                         g.stride, g.padding, g.dilation, g.groups, self.relu)

    def to_float(self) -> nn.Conv1d | nn.Conv2d:
        """A float convolution holding the dequantized weight and bias (QAT starting from a calibrated model)."""
        w, g = dequantize(self.qweight, self.w_scale, axis=0), self.geometry
        if len(g.padding) != len(g.stride):
            raise ValueError(f"this convolution's padding {g.padding} (begins, ends) is asymmetric, which nn.Conv2d "
                             "cannot hold; start QAT from the float model instead of the calibrated one")
        cls = nn.Conv1d if w.dim() == 3 else nn.Conv2d
        layer = cls(w.shape[1] * g.groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(g.stride),
                    padding=tuple(g.padding), dilation=tuple(g.dilation), groups=g.groups, bias=self.bias is not None)
        bias = None if self.bias is None else (self.bias.double() * (self.x_scale * self.w_scale).double()).float()
        return _float_copy(layer, w, bias)

    def extra_repr(self) -> str:
        return f"{tuple(self.qweight.shape)}, {self.geometry}, relu={self.relu}"


@register_qmodule(nn.Linear, "static")
class QuantizedLinear(_StaticBase):
    """Linear layer running as QLinearMatMul (no bias) or MatMulIntegerToFloat + Add (with bias) in ONNX Runtime.

    The int8 weight is stored transposed (``[in, out]``) so the exported MatMul reads it without a Transpose.
    ``y_qparams=None`` keeps the output float (graph mode, when no integer kernel reads it): no requantization.
    ``rows=True`` (a float output, quantized for a runtime whose kernel for it rounds the input per row at run time:
    LiteRT's hybrid FULLY_CONNECTED) rounds the input as that kernel does (``kernels.qlinear_rows``) instead of on
    the calibrated input grid.
    A float layer carrying SmoothQuant scales ``s`` (``mixq_smooth``, set where they cannot be folded into the
    producer) gives ``W * s`` as int8 weight and ``x_smooth = 1 / s``: the input is multiplied by it (one Mul in
    the exported graph) before it is quantized, so ``(x / s) @ (W * s).T`` computes the float layer's ``x @ W.T``.
    """

    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec, x_qparams: QParams, y_qparams: QParams | None,
                 relu: bool = False, w_scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self._set_activation_qparams(x_qparams, y_qparams)
        smooth = getattr(linear, "mixq_smooth", None)
        weight = linear.weight if smooth is None else linear.weight.detach() * smooth
        q, w_scale = quantize_weight(weight, weight_spec, axis=0, scale=w_scale)
        self.register_buffer("weight_t", q.t().contiguous())
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", float_bias(linear))
        self.register_buffer("x_smooth", None if smooth is None else (1.0 / smooth).to(torch.float32))
        self.relu = relu
        self.rows = False
        self.expose(linear)

    def float_weight(self) -> torch.Tensor:
        return ops.dequantize_weight(self.weight_t, self.w_scale, 1).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.x_smooth is not None:
            x = x * self.x_smooth
        if self.rows:
            return ops.qlinear_rows(x, self.weight_t, self.w_scale, self.bias, self.relu)
        return ops.qlinear(x, self.x_scale, self.x_zp, self.weight_t, self.w_scale, self.bias, self.y_scale,
                           self.y_zp, self.relu)

    def to_float(self) -> nn.Linear:
        """A float ``nn.Linear`` holding the dequantized weight (SmoothQuant scales divided back out) and the
        bias."""
        w = dequantize(self.weight_t.t(), self.w_scale, axis=0)
        if self.x_smooth is not None:
            w = w * self.x_smooth
        return _float_copy(nn.Linear(w.shape[1], w.shape[0], bias=self.bias is not None), w, self.bias)

    def extra_repr(self) -> str:
        k, n = self.weight_t.shape
        out = ", float output" if self.y_scale is None else ""
        out += " (input rounded per row at run time)" if self.rows else ""
        smooth = ", smoothed input" if self.x_smooth is not None else ""
        return f"in_features={k}, out_features={n}, relu={self.relu}{out}{smooth}"


class QuantizedAdd(_StaticBase):
    """Elementwise ``a + b`` (+ ReLU) on quantized tensors, running as ONNX Runtime's QLinearAdd.

    ``x_scale``/``x_zp`` quantize ``a``, ``b_scale``/``b_zp`` quantize ``b``. Inserted by graph-mode quantization
    for residual connections, so a ResNet block stays on the integer path end to end.
    """

    def __init__(self, a_qparams: QParams, b_qparams: QParams, y_qparams: QParams, relu: bool = False) -> None:
        super().__init__()
        self._set_activation_qparams(a_qparams, y_qparams)
        self.register_buffer("b_scale", b_qparams[0].clone())
        self.register_buffer("b_zp", b_qparams[1].clone())
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ops.qadd(a, self.x_scale, self.x_zp, b, self.b_scale, self.b_zp, self.y_scale, self.y_zp, self.relu)

    def extra_repr(self) -> str:
        return f"relu={self.relu}"


class QuantizedMatMul(_StaticBase):
    """``(a @ b) * alpha`` of two activations on uint8/int8 grids with a float result (ONNX Runtime:
    MatMulIntegerToFloat): attention's Q·Kᵀ and probabilities·V in graph mode. ``x_scale``/``x_zp`` quantize
    ``a``, ``b_scale``/``b_zp`` quantize ``b``; both are usually the producing layer's output grid, so ONNX Runtime
    reads its uint8 tensor. ``alpha`` (attention's 1/√d, folded by graph mode) joins the output multiplier, so it
    costs no operator of its own."""

    def __init__(self, a_qparams: QParams, b_qparams: QParams, alpha: float = 1.0) -> None:
        super().__init__()
        self._set_activation_qparams(a_qparams, None)
        self.register_buffer("b_scale", b_qparams[0].clone())
        self.register_buffer("b_zp", b_qparams[1].clone())
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ops.qmatmul(a, self.x_scale, self.x_zp, b, self.b_scale, self.b_zp, self.alpha)

    def extra_repr(self) -> str:
        return "" if self.alpha == 1.0 else f"alpha={self.alpha}"
