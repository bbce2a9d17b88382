"""Calibration-time wrappers: run the float computation unchanged while observers record its inputs and output.

An input observer can be *shared* with the producer of that input (graph mode): the two then get identical
quantization parameters, so the exported graph has one QuantizeLinear/DequantizeLinear pair per tensor and ONNX
Runtime keeps the integer chain unbroken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.adaround import GramAccumulator
from mixq.quant.bias_correction import channel_sum
from mixq.quant.modules.copies import plain_copy
from mixq.quant.modules.facade import Delegating
from mixq.quant.observers import Observer


def folded_pad(layer: nn.Module) -> list[int] | None:
    """The ``F.pad`` amounts (last axis first) of the zero pad graph mode folded into ``layer`` (its ``mixq_pads``,
    begins then ends per axis; see ``mixq.quant.graph.fold_pads``), or None."""
    pads = getattr(layer, "mixq_pads", None)
    if not pads:
        return None
    dims = len(pads) // 2
    return [p for axis in reversed(range(dims)) for p in (pads[axis], pads[dims + axis])]


def unfold_pad(layer: nn.Module) -> nn.Module:
    """``layer`` computing in float what it computed before graph mode folded a zero pad into it: the pad back in
    front of a copy without ``mixq_pads`` (parameters shared, ``layer`` itself unchanged); ``layer`` if none."""
    amounts = folded_pad(layer)
    if amounts is None:
        return layer
    pad = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)[len(amounts) // 2 - 1](tuple(amounts), 0.0)
    plain = plain_copy(layer)
    del plain.mixq_pads
    return nn.Sequential(pad, plain)


class ObservedLayer(Delegating, nn.Module):
    """Float layer + input/output observers (+ the ReLU fused into it, applied before the output observer). Model
    code reading the layer's ``weight`` or hyper-parameters (``stride``, ...) reads the wrapped layer's.

    ``relu_max``: the fused ReLU's upper bound (ReLU6: 6); the observer then sees the clamped output, so the output
    range ends at or below it and the quantized layer's saturation reproduces the clamp. A layer with SmoothQuant
    scales in its quantization (``mixq_smooth``, ``mixq.quant.smoothquant``) has its input observed as ``x / s``,
    the tensor its quantized form quantizes; such an input never shares its producer's scale. ``track_mean`` also
    sums each input channel (after a folded pad) for bias correction (``input_mean``); ``track_gram`` accumulates
    the Gram matrix of the layer's input patches for AdaRound (``input_gram``).
    """

    def __init__(self, layer: nn.Module, input_observer: Observer, output_observer: Observer,
                 relu: bool = False, relu_max: float | None = None, track_mean: bool = False,
                 track_gram: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.input_observer = input_observer
        self.output_observer = output_observer
        self.relu = relu
        self.relu_max = relu_max
        self.shared_input = False
        self.float_output = False  # graph mode: no integer kernel reads the output, so it is not requantized
        self.track_mean = track_mean
        if track_mean:
            self.register_buffer("input_sum", torch.zeros(0, dtype=torch.float64))
            self.register_buffer("input_count", torch.tensor(0.0, dtype=torch.float64))
        self.gram = GramAccumulator() if track_gram else None

    def input_mean(self) -> torch.Tensor | None:
        """Each input channel's mean over the calibration data, or None when not tracked (or nothing ran)."""
        if not self.track_mean or float(self.input_count) == 0.0:
            return None
        return self.input_sum / self.input_count

    def input_gram(self) -> torch.Tensor | None:
        """``E[x x^T]`` of the layer's input patches per group (``mixq.quant.adaround``), or None when not tracked."""
        return None if self.gram is None or self.gram.rows == 0 else self.gram.result()

    def _track(self, x: torch.Tensor) -> None:
        channel_dim = -1 if isinstance(self.layer, nn.Linear) else 1
        sums = channel_sum(x, channel_dim)
        self.input_sum = sums if self.input_sum.numel() == 0 else self.input_sum + sums
        self.input_count += x.numel() / x.shape[channel_dim]

    @property
    def smooth(self) -> torch.Tensor | None:
        """The per-input-channel SmoothQuant scale ``s`` the quantized layer divides its input by, if any."""
        return getattr(self.layer, "mixq_smooth", None)

    def share_input(self, index: int, observer: Observer) -> None:
        """Use the producer's output observer for this input (index 0: the only input)."""
        self.input_observer = observer
        self.shared_input = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amounts = folded_pad(self.layer)  # a zero pad graph mode folded in (``fold_pads``)
        if amounts is not None:
            x = F.pad(x, amounts)
        if self.track_mean:
            self._track(x)
        if self.gram is not None and self.smooth is None:
            self.gram.add(self.layer, x)
        if not self.shared_input:
            smooth = self.smooth
            self.input_observer(x if smooth is None else x / smooth)
        y = self.layer(x)
        if self.relu:
            y = torch.relu(y) if self.relu_max is None else y.clamp(0.0, self.relu_max)
        return y if self.float_output else self.output_observer(y)  # a float output gets no grid: nothing to see


def _is_float_tensor(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


class _ObservedPair(nn.Module):
    """Observers on the two inputs of a binary op; either can be shared with its producer (graph mode)."""

    def __init__(self, a_observer: Observer, b_observer: Observer) -> None:
        super().__init__()
        self.a_observer = a_observer
        self.b_observer = b_observer
        self.shared = [False, False]

    def share_input(self, index: int, observer: Observer) -> None:
        setattr(self, ("a_observer", "b_observer")[index], observer)
        self.shared[index] = True

    def _observe_inputs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if not self.shared[0]:
            self.a_observer(a)
        if not self.shared[1]:
            self.b_observer(b)


class ObservedAdd(_ObservedPair):
    """``a + b`` (+ fused ReLU) with observers on both inputs and the output; becomes ``QuantizedAdd``."""

    def __init__(self, a_observer: Observer, b_observer: Observer, output_observer: Observer,
                 relu: bool = False) -> None:
        super().__init__(a_observer, b_observer)
        self.output_observer = output_observer
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if not (_is_float_tensor(a) and _is_float_tensor(b)):  # shape arithmetic and the like: not ours
            return a + b
        self._observe_inputs(a, b)
        y = a + b
        if self.relu:
            y = torch.relu(y)
        return self.output_observer(y)


def _scaled(y: torch.Tensor, alpha: float) -> torch.Tensor:
    return y if alpha == 1.0 else y * alpha


class ObservedMatMul(_ObservedPair):
    """``(a @ b) * alpha`` of two activations (attention's Q·Kᵀ, probabilities·V) with observers on both inputs;
    becomes ``QuantizedMatMul``. Its output stays float (softmax and the output projection read it), so it has no
    output observer. ``alpha``: the constant factor graph mode folded into it (attention's 1/√d), 1.0 if none."""

    def __init__(self, a_observer: Observer, b_observer: Observer) -> None:
        super().__init__(a_observer, b_observer)
        self.alpha = 1.0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._observe_inputs(a, b)
        return _scaled(torch.matmul(a, b), self.alpha)


class FloatMatMul(nn.Module):
    """``(a @ b) * alpha`` left in float (excluded, kept fp32, or never reached in calibration)."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _scaled(torch.matmul(a, b), self.alpha)

    def extra_repr(self) -> str:
        return "" if self.alpha == 1.0 else f"alpha={self.alpha}"


class FloatAdd(nn.Module):
    """``a + b`` (+ ReLU) left in float: what an add that calibration never reached becomes."""

    def __init__(self, relu: bool = False) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        y = a + b
        return torch.relu(y) if self.relu else y


def refuse_observed(model: nn.Module, action: str) -> None:
    """Raise a ``ValueError`` explaining what to do when ``model`` still holds calibration or QAT wrappers."""
    if any(isinstance(m, (ObservedLayer, ObservedAdd, ObservedMatMul)) for m in model.modules()):
        raise ValueError(f"cannot {action} {type(model).__name__}: it is a quantization-aware training model (or "
                         "is mid-calibration); convert it first with qmodel = mixq.convert(model)")
