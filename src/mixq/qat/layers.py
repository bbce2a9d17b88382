"""QAT layers: the float layer trained against fake-quantized weights and activations, and its exact eval twin.

``QATLayer`` extends calibration's ``ObservedLayer`` (so graph mode fuses ReLUs, quantizes adds and shares scales
for QAT exactly as for post-training quantization) with weight fake quantization and BatchNorm folding:

* **Training**: the weight is folded with the BatchNorm's *running* statistics, ``w * gamma / sqrt(var + eps)``,
  and fake-quantized; while BatchNorm still trains, the convolution's output is divided back by that factor and
  the BatchNorm runs on batch statistics (the recipe of Jacob et al. 2018 / Krishnamoorthi 2018). The network
  sees exactly the quantized folded weight it will deploy, yet BatchNorm keeps normalising with batch statistics,
  which keeps training stable. Once BatchNorm is frozen (``freeze_bn_after`` or ``mixq.freeze_batchnorm``) the
  layer runs as the deployed one: ``conv(x, fq(w_folded)) + b_folded``.
* **Eval**: the layer builds the very ``QuantizedConv``/``QuantizedLinear`` that ``mixq.convert`` produces and
  calls it, so ``qat_model.eval()(x)`` equals ``mixq.convert(qat_model)(x)`` bit for bit and evaluation during
  training measures the deployed integer arithmetic, not an approximation of it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from mixq.qat.fake_quantizer import FakeQuantizer
from mixq.quant.fusion import batchnorm_affine, folded_weight_bias, relu_module, saturation_clamps
from mixq.quant.modules.observed import (
    ObservedAdd,
    ObservedLayer,
    ObservedMatMul,
    _is_float_tensor,
    folded_pad,
    unfold_pad,
)
from mixq.quant.modules.registry import qmodule_class, register_qat_module
from mixq.quant.modules.static import QuantizedAdd, QuantizedMatMul
from mixq.quant.primitives import MIN_SCALE, along, fake_quantize, fake_quantize_lsq
from mixq.quant.spec import QuantConfig, QuantSpec
from mixq.quant.weights import weight_scale

_BN = nn.BatchNorm1d | nn.BatchNorm2d


def with_parameters(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A shallow copy of ``layer`` (same geometry and forward) computing with ``weight`` and ``bias`` instead.

    A parametrized layer (``weight_norm``: Wav2Vec2's positional convolution) is copied as its plain class without
    the parametrizations (``copy.copy`` refuses parametrized modules), so ``weight`` is the tensor given, which the
    caller computed from the parametrization (the layer's own ``weight``)."""
    cls = type(layer)
    modules = layer._modules
    if parametrize.is_parametrized(layer):
        cls = cls.__bases__[0]  # parametrize derives a class from the layer's own
        modules = {k: m for k, m in modules.items() if k != "parametrizations"}
    proxy = cls.__new__(cls)
    proxy.__dict__.update(layer.__dict__)
    proxy._parameters = {"weight": weight, "bias": bias}
    proxy._modules = dict(modules)
    return proxy


@register_qat_module((nn.Linear, nn.Conv1d, nn.Conv2d))
class QATLayer(ObservedLayer):
    """A layer with weights (+ its BatchNorm, + fused ReLU): fake-quantized weight, input and output. Its float
    computation is the layer's own forward (run with the fake-quantized weight), and its deployed form is the
    static module the layer-kind registry holds for it."""

    def __init__(self, layer: nn.Module, weight_spec: QuantSpec, input_fq: FakeQuantizer, output_fq: FakeQuantizer,
                 relu: bool = False, bn: nn.Module | None = None, learnable: bool = False,
                 freeze_bn_after: int | None = None, name: str = "", relu_max: float | None = None) -> None:
        super().__init__(layer, input_fq, output_fq, relu, relu_max)
        self.bn = bn
        self.weight_spec = weight_spec
        self.learnable = learnable
        self.freeze_bn_after = freeze_bn_after
        self.name = name
        self.axis = 0 if weight_spec.granularity == "per_channel" else None
        self.register_buffer("bn_frozen", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        if learnable:
            with torch.no_grad():
                w, _ = self.folded()
                absmax = w.abs().amax(dim=list(range(1, w.dim()))) if self.axis == 0 else w.abs().max()
            if bool((absmax == 0).any()):
                dead = torch.nonzero(absmax == 0).flatten().tolist()[:8]
                where = f" (output channels {dead})" if self.axis == 0 else ""
                raise ValueError(f"learnable_scales: the weight of {name!r} is all zeros{where} (after folding its "
                                 "BatchNorm), so its LSQ scale would start at 0; train the float model first, or use "
                                 "learnable_scales=False")
            self.weight_scale = nn.Parameter(weight_scale(w, weight_spec, axis=0))

    @classmethod
    def prepare(cls, layer: nn.Module, weight_spec: QuantSpec, *, quantizer: Callable[[str], FakeQuantizer],
                relu: bool = False, bn: nn.Module | None = None, learnable: bool = False,
                freeze_bn_after: int | None = None, name: str = "", relu_max: float | None = None) -> QATLayer:
        """The QAT layer for float ``layer``; ``quantizer(label)`` makes its input and output fake quantizers.
        ``relu_max``: the fused ReLU's upper bound (ReLU6), clamped before the output quantizer."""
        return cls(layer, weight_spec, quantizer("input"), quantizer("output"), relu=relu, bn=bn,
                   learnable=learnable, freeze_bn_after=freeze_bn_after, name=name, relu_max=relu_max)

    def describe(self) -> str:
        scales = "learned" if self.learnable else "min-max"
        return f"QAT w:{self.weight_spec} ({scales} scales)" + (", float output" if self.float_output else "")

    # --- weights -------------------------------------------------------------------------------------------------
    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias with the BatchNorm's running statistics folded in (differentiable)."""
        w, b = self.layer.weight, self.layer.bias
        return (w, b) if self.bn is None else folded_weight_bias(w, b, self.bn)

    def _fake_quantize_weight(self, w: torch.Tensor) -> torch.Tensor:
        spec = self.weight_spec
        if self.learnable:
            zp = torch.zeros(self.weight_scale.shape, dtype=torch.int8)
            return fake_quantize_lsq(w, self.weight_scale, zp, self.axis, spec.qmin, spec.qmax)
        scale = weight_scale(w, spec, axis=0)
        zp = torch.zeros(scale.shape, dtype=torch.int8)
        return fake_quantize(w, scale, zp, self.axis, spec.qmin, spec.qmax)

    def _compute(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return with_parameters(self.layer, w, b)(x)

    # --- forward -------------------------------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        """Whether training has set its activation ranges (a layer never reached stays float at conversion)."""
        return self.input_observer.has_data and (self.float_output or self.output_observer.has_data)

    @property
    def bn_training(self) -> bool:
        return self.bn is not None and self.training and not bool(self.bn_frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.to_quantized()(x)
        self.steps += 1
        if self.freeze_bn_after is not None and int(self.steps) > self.freeze_bn_after:
            self.bn_frozen.fill_(True)
        amounts = folded_pad(self.layer)  # a zero pad graph mode folded in (``fold_pads``), as ObservedLayer pads
        if amounts is not None:
            x = F.pad(x, amounts)
        if not self.shared_input:
            x = self.input_observer(x)
        w, b = self.folded()
        w_q = self._fake_quantize_weight(w)
        if self.bn_training:
            factor, _ = batchnorm_affine(self.bn)
            safe = torch.where(factor == 0, torch.ones_like(factor), factor)
            y = self._compute(x, w_q, None)
            y = y / along(safe, y.dim(), 1)
            if self.layer.bias is not None:
                y = y + along(self.layer.bias, y.dim(), 1)
            y = self.bn(y)
        else:
            y = self._compute(x, w_q, b)
        if self.relu:
            y = torch.relu(y) if self.relu_max is None else y.clamp(0.0, self.relu_max)
        return y if self.float_output else self.output_observer(y)

    # --- conversion ----------------------------------------------------------------------------------------------
    def to_quantized(self) -> nn.Module:
        """The deployed layer: int8 folded weight (learned or min-max scale), calibrated activation scales."""
        with torch.no_grad():
            w, b = self.folded()
            proxy = with_parameters(self.layer, w.detach(), None if b is None else b.detach())
            x_q = self.input_observer.calculate_qparams()
            y_q = None if self.float_output else self.output_observer.calculate_qparams()
            w_scale = self.weight_scale.detach().clamp(min=MIN_SCALE) if self.learnable else None
            static = qmodule_class(self.layer, "static")
            new = static.from_float(proxy, QuantConfig("static", weight=self.weight_spec), x_q, y_q,
                                    relu=self.relu, w_scale=w_scale, relu_max=self.relu_max)
        if saturation_clamps(y_q, self.relu_max, self.output_observer.spec.qmax):
            return new
        return nn.Sequential(new, relu_module(self.relu_max))  # a grid past the bound: the clamp stays an op

    def to_float(self) -> nn.Module:
        """The float layer with its BatchNorm folded (for layers that never ran during training)."""
        with torch.no_grad():
            w, b = self.folded()
            bias = None if b is None else nn.Parameter(b.detach().clone())
            layer = unfold_pad(copy.deepcopy(with_parameters(self.layer, nn.Parameter(w.detach().clone()), bias)))
        return nn.Sequential(layer, relu_module(self.relu_max)) if self.relu else layer

    def extra_repr(self) -> str:
        bn = ", bn folded" if self.bn is not None else ""
        out = ", float output" if self.float_output else ""
        return f"w:{self.weight_spec}, relu={self.relu}{bn}, learnable={self.learnable}{out}"


class QATAdd(ObservedAdd):
    """``a + b`` (+ ReLU) on fake-quantized inputs; in eval mode exactly the ``QuantizedAdd`` it converts to."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not (_is_float_tensor(a) and _is_float_tensor(b)):
            return a + b
        if not self.training:
            return self.to_quantized()(a, b)
        a = a if self.shared[0] else self.a_observer(a)
        b = b if self.shared[1] else self.b_observer(b)
        y = a + b
        if self.relu:
            y = torch.relu(y)
        return self.output_observer(y)

    @property
    def has_data(self) -> bool:
        return all(o.has_data for o in (self.a_observer, self.b_observer, self.output_observer))

    def to_quantized(self) -> QuantizedAdd:
        qparams = (o.calculate_qparams() for o in (self.a_observer, self.b_observer, self.output_observer))
        return QuantizedAdd(*qparams, relu=self.relu)


class QATMatMul(ObservedMatMul):
    """``(a @ b) * alpha`` of two fake-quantized activations (attention's Q·Kᵀ and probabilities·V in graph mode);
    in eval mode exactly the ``QuantizedMatMul`` it converts to. Its output stays float, as in static mode."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.to_quantized()(a, b)
        a = a if self.shared[0] else self.a_observer(a)
        b = b if self.shared[1] else self.b_observer(b)
        y = torch.matmul(a, b)
        return y if self.alpha == 1.0 else y * self.alpha

    @property
    def has_data(self) -> bool:
        return self.a_observer.has_data and self.b_observer.has_data

    def to_quantized(self) -> QuantizedMatMul:
        return QuantizedMatMul(self.a_observer.calculate_qparams(), self.b_observer.calculate_qparams(), self.alpha)
