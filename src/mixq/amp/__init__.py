"""Mixed-precision training: policies, loss scaling, fp32 overrides, master weights and numerics diagnostics.

Example:
    >>> import torch, mixq
    >>> model = torch.nn.Linear(8, 2)
    >>> mp = mixq.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16")
    >>> mp.policy
    Policy('p=f32,c=bf16,o=f32')
"""

from mixq.amp.diagnostics import NumericsConfig, NumericsReport
from mixq.amp.errors import (
    AmpError,
    LossScaleCollapseError,
    NonFiniteGradientsError,
    PrecisionUnsupportedError,
    StepOrderError,
)
from mixq.amp.loss_scale import LossScale
from mixq.amp.mixed_precision import MixedPrecision
from mixq.amp.overrides import DEFAULT_KEEP_FP32
from mixq.amp.policy import Policy, PolicyChoice, resolve_policy
from mixq.amp.stats import AmpStats, StepRecord

__all__ = [
    "DEFAULT_KEEP_FP32",
    "AmpError",
    "AmpStats",
    "LossScale",
    "LossScaleCollapseError",
    "MixedPrecision",
    "NonFiniteGradientsError",
    "NumericsConfig",
    "NumericsReport",
    "Policy",
    "PolicyChoice",
    "PrecisionUnsupportedError",
    "StepOrderError",
    "StepRecord",
    "resolve_policy",
]
