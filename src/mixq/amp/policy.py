"""Precision policies: which dtype parameters are stored in, which dtype computes, which dtype comes out.

A :class:`Policy` is frozen data in the spirit of Keras'
 ``mixed_float16`` and jmp's ``"p=f32,c=bf16,o=f32"``.
:func:`resolve_policy` turns a user string (including ``"auto"``) into a policy for one device and says why.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from mixq.amp.errors import PrecisionUnsupportedError
from mixq.quant.cpu import cpu_flags

__all__ = ["Policy", "PolicyChoice", "autocast_supports", "native_bf16", "resolve_policy"]

_DTYPES: dict[str, torch.dtype] = {
    "f32": torch.float32, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "f16": torch.float16, "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip
_SHORT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_KEYS = {"p": "param_dtype", "params": "param_dtype", "c": "compute_dtype", "compute": "compute_dtype",
         "o": "output_dtype", "output": "output_dtype"}  # fmt: skip
_NAMED = {
    "fp32": ("f32", "f32", "f32"), "float32": ("f32", "f32", "f32"),
    "fp16": ("f32", "f16", "f32"), "mixed_float16": ("f32", "f16", "f32"),
    "bf16": ("f32", "bf16", "f32"), "mixed_bfloat16": ("f32", "bf16", "f32"),
}  # fmt: skip
PRECISIONS = ("fp16", "bf16", "fp32", "auto")


def _dtype(value: str | torch.dtype, field: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        dtype = value
    elif isinstance(value, str) and value.strip().lower() in _DTYPES:
        dtype = _DTYPES[value.strip().lower()]
    else:
        raise ValueError(f"{field}={value!r} is not a supported dtype; use one of f32, f16, bf16")
    if dtype not in _SHORT:
        raise ValueError(f"{field}={dtype} is not supported; use torch.float32, torch.float16 or torch.bfloat16")
    return dtype


@dataclasses.dataclass(frozen=True)
class Policy:
    """Dtypes of one mixed-precision recipe.

    Attributes:
        param_dtype: dtype the model's parameters are stored in (16-bit means fp32 master weights).
        compute_dtype: dtype autocast runs eligible ops in.
        output_dtype: dtype the model's floating outputs are cast to.

    Example:
        >>> Policy.parse("bf16")
        Policy('p=f32,c=bf16,o=f32')
        >>> Policy.parse("p=f32,c=f16,o=f32").compute_dtype
        torch.float16
    """

    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    output_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, field, _dtype(getattr(self, field), field))
        if self.param_dtype != torch.float32 and self.param_dtype != self.compute_dtype:
            raise ValueError(
                f"param_dtype={self.param_dtype} must be float32 or equal compute_dtype={self.compute_dtype}"
            )

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse ``"fp16"``, ``"mixed_bfloat16"``, ``"fp32"`` or ``"p=f32,c=bf16,o=f32"`` (keys p/c/o)."""
        if not isinstance(text, str):
            raise TypeError(f"policy text must be a str, got {type(text).__name__}")
        key = text.strip().lower()
        if key in _NAMED:
            return cls(*(_DTYPES[d] for d in _NAMED[key]))
        if "=" not in key:
            raise ValueError(
                f"unknown precision {text!r}; use one of {', '.join(PRECISIONS)}, "
                "mixed_float16, mixed_bfloat16 or a spec like 'p=f32,c=bf16,o=f32'"
            )
        fields: dict[str, torch.dtype] = {}
        for part in key.split(","):
            name, _, value = part.partition("=")
            field = _KEYS.get(name.strip())
            if field is None:
                raise ValueError(f"unknown key {name.strip()!r} in policy {text!r}; use p=, c= and o=")
            fields[field] = _dtype(value, field)
        return cls(**fields)

    @property
    def is_mixed(self) -> bool:
        """True when compute runs in a 16-bit dtype."""
        return self.compute_dtype != torch.float32

    @property
    def needs_loss_scaling(self) -> bool:
        """True for fp16 compute, whose narrow exponent range lets small gradients underflow."""
        return self.compute_dtype == torch.float16

    @property
    def master_weights(self) -> bool:
        """True when parameters are stored in 16-bit and an fp32 master copy is updated instead."""
        return self.param_dtype != torch.float32

    def with_master_weights(self) -> Policy:
        """Return this policy with parameters stored in the compute dtype."""
        return dataclasses.replace(self, param_dtype=self.compute_dtype)

    def to_dict(self) -> dict[str, str]:
        """Serialise to ``{"param_dtype": "f32", ...}``."""
        return {f.name: _SHORT[getattr(self, f.name)] for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: _dtype(v, k) for k, v in data.items()})

    def __str__(self) -> str:
        return f"p={_SHORT[self.param_dtype]},c={_SHORT[self.compute_dtype]},o={_SHORT[self.output_dtype]}"

    def __repr__(self) -> str:
        return f"Policy({str(self)!r})"


@dataclasses.dataclass(frozen=True)
class PolicyChoice:
    """A resolved policy for one device and the reason it was chosen."""

    policy: Policy
    device_type: str
    reason: str


def autocast_supports(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch.autocast(device_type, dtype=dtype)`` really runs in ``dtype`` on this machine."""
    if dtype == torch.float32:
        return True
    if not torch.amp.is_autocast_available(device_type):
        return False
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return False
        if dtype == torch.bfloat16:
            return torch.cuda.is_bf16_supported()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = torch.autocast(device_type, dtype=dtype)
    return bool(getattr(ctx, "_enabled", True)) and not caught


def native_bf16(device_type: str) -> bool:
    """Whether the device computes bf16 in hardware (CUDA sm80+, CPUs with AVX512-BF16 or AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    return autocast_supports(device_type, torch.bfloat16)


def resolve_policy(precision: str | Policy, device_type: str) -> PolicyChoice:
    """Turn ``"fp16"``/``"bf16"``/``"fp32"``/``"auto"``/a spec/a :class:`Policy` into a checked choice.

    ``"auto"`` picks bf16 where the hardware has it, else fp16 with loss scaling on CUDA, else fp32.
    fp16 or bf16 on a device whose autocast cannot run that dtype raises :class:`PrecisionUnsupportedError`.

    Example:
        >>> resolve_policy("fp32", "cpu").policy
        Policy('p=f32,c=f32,o=f32')
    """
    if isinstance(precision, str) and precision.strip().lower() == "auto":
        if native_bf16(device_type):
            return PolicyChoice(Policy.parse("bf16"), device_type, f"{device_type} computes bf16 natively")
        if device_type == "cuda" and autocast_supports("cuda", torch.float16):
            return PolicyChoice(
                Policy.parse("fp16"), device_type, "CUDA device without bf16: fp16 with dynamic loss scaling"
            )
        return PolicyChoice(
            Policy.parse("fp32"), device_type,
            f"{device_type} has no native bf16 and fp16 is only auto-selected on CUDA: staying in fp32",
        )  # fmt: skip
    if isinstance(precision, Policy):
        policy = precision
    elif isinstance(precision, str):
        policy = Policy.parse(precision)
    else:
        raise TypeError(f"precision must be a str or Policy, got {type(precision).__name__}")
    if not autocast_supports(device_type, policy.compute_dtype):
        raise PrecisionUnsupportedError(
            f"{policy.compute_dtype} autocast is not available on device {device_type!r}; "
            "use precision='fp32', 'bf16' or 'auto' there"
        )
    return PolicyChoice(policy, device_type, f"requested {str(precision)!r}")
