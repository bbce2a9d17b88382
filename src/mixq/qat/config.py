"""``QATConfig``: the frozen, serialisable description of a quantization-aware training run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mixq.quant.observers import observer_names
from mixq.quant.spec import DEFAULT_ACTIVATION, ObserverSpec, QuantConfig, QuantSpec


@dataclass(frozen=True)
class QATConfig:
    """How ``mixq.prepare_qat`` fake-quantizes a model.

    ``weight`` is symmetric int8 storage of 2 to 8 bits, per channel (default) or per tensor; activations are
    uint8 (8 bits, what ONNX Runtime's integer kernels take). ``observer`` initialises activation ranges from the
    training batches (``moving_average``, the usual QAT choice, or ``minmax``); ``freeze_observers_after`` stops
    updating them after that many training batches per quantizer, ``freeze_bn_after`` switches Conv+BatchNorm to
    the running statistics after that many training forward passes per layer (None: never, unless
    ``mixq.freeze_observers`` / ``mixq.freeze_batchnorm`` are called). ``learnable_scales`` trains every scale with
    LSQ. ``float_outputs`` keeps the layers that compute the model's outputs (logits) float, as static graph mode
    does: a uint8 grid frozen early in training would clamp them.
    Example: ``QATConfig(QuantSpec("int8", bits=4, granularity="per_tensor"), learnable_scales=True)``.
    """

    weight: QuantSpec = QuantSpec("int8", granularity="per_channel")
    activation: QuantSpec = DEFAULT_ACTIVATION
    observer: ObserverSpec = ObserverSpec("moving_average")
    learnable_scales: bool = False
    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    exclude: tuple[str, ...] = ()
    float_outputs: bool = True

    def __post_init__(self) -> None:
        if self.weight.granularity not in ("per_channel", "per_tensor"):
            raise ValueError(f"QAT weights are per_channel or per_tensor, got {self.weight.granularity!r}")
        if self.activation.bits != 8 or self.activation.dtype != "uint8":
            raise ValueError("QAT activations are uint8 with 8 bits (what ONNX Runtime's integer kernels take); "
                             f"got {self.activation.dtype}/{self.activation.bits} bits")
        streaming = observer_names(streaming=True)
        if self.observer.name not in streaming:
            raise ValueError(f"QAT observers are {' or '.join(streaming)} (ranges follow training batches); "
                             f"got {self.observer.name!r}")
        for field in ("freeze_observers_after", "freeze_bn_after"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{field} must be a positive number of training steps or None, got {value!r}")
        if isinstance(self.exclude, str):
            raise TypeError(f"exclude must be a list of name patterns, e.g. exclude=[{self.exclude!r}]")
        # the converted model is a static model: its config must be valid too
        QuantConfig("static", weight=self.weight, activation=self.activation, exclude=tuple(self.exclude))

    def static_config(self) -> QuantConfig:
        """The ``QuantConfig`` the converted model reports (static int8, this weight spec)."""
        return QuantConfig("static", weight=self.weight, activation=self.activation, observer=self.observer,
                           exclude=tuple(self.exclude))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QATConfig:
        return cls(weight=QuantSpec.from_dict(data["weight"]), activation=QuantSpec.from_dict(data["activation"]),
                   observer=ObserverSpec(**data["observer"]), learnable_scales=data["learnable_scales"],
                   freeze_observers_after=data["freeze_observers_after"], freeze_bn_after=data["freeze_bn_after"],
                   exclude=tuple(data["exclude"]), float_outputs=data.get("float_outputs", True))
