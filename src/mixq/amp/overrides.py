"""Per-module float32 overrides inside autocast, and the cast of a model's outputs to the policy's dtype.

``keep_fp32=["head", "*norm*", nn.Embedding]`` selects modules by ``fnmatch`` patterns on their qualified
names and/or by type. A selected module runs with autocast disabled and its 16-bit floating inputs cast to
float32, so its outputs are float32 — like Keras' float32 output layer. Normalisation layers and loss modules
are selected by default (CPU autocast runs ``layer_norm``/``group_norm``/``batch_norm`` in 16-bit otherwise);
``MixedPrecision`` lets those whose kernels are checked to accumulate in float32 go without (``mixq.amp.norms``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from mixq.amp.tree import cast_floating

__all__ = ["DEFAULT_KEEP_FP32", "Fp32Overrides", "OutputCast", "match_keep_fp32"]

DEFAULT_KEEP_FP32: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.modules.loss._Loss,
)


def match_keep_fp32(
    model: nn.Module, keep_fp32: Iterable[str | type[nn.Module]] = (), include_defaults: bool = True
) -> dict[str, str]:
    """Names of the modules to run in float32, each with the rule that selected it.

    Descendants of a selected module are not listed: they already run inside its float32 region.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> match_keep_fp32(m, ["0"])
        {'0': "pattern '0'", '1': 'type LayerNorm'}
    """
    patterns: list[str] = []
    types: list[type] = list(DEFAULT_KEEP_FP32) if include_defaults else []
    for rule in keep_fp32:
        if isinstance(rule, str):
            patterns.append(rule)
        elif isinstance(rule, type) and issubclass(rule, nn.Module):
            types.append(rule)
        else:
            raise TypeError(f"keep_fp32 entries must be name patterns (str) or nn.Module types, got {rule!r}")
    matched: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or any(name.startswith(m + ".") for m in matched):
            continue
        pattern = next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
        if pattern is not None:
            matched[name] = f"pattern {pattern!r}"
            continue
        kind = next((t for t in types if isinstance(module, t)), None)
        if kind is not None:
            matched[name] = f"type {type(module).__name__}"
    unused = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in model.named_modules())]
    if unused:
        raise ValueError(
            f"keep_fp32 patterns {unused} match no module; names look like "
            f"{[n for n, _ in model.named_modules() if n][:5]}"
        )
    return matched


class _Fp32Forward:
    """Replacement ``forward``: float32 inputs, autocast off; a class, not a closure, so deepcopy works."""

    _mixq_fp32 = True

    def __init__(self, original: Callable[..., Any], device_type: str) -> None:
        self.original, self.device_type = original, device_type

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_autocast_enabled(self.device_type):
            return self.original(*args, **kwargs)
        args, kwargs = cast_floating((args, kwargs), torch.float32)
        with torch.autocast(self.device_type, enabled=False):
            return self.original(*args, **kwargs)


@dataclasses.dataclass
class Fp32Overrides:
    """Installs/removes float32 forwards on the selected modules of ``model``.

    Example:
        >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> ov = Fp32Overrides(m, {"1": "pattern '1'"}, "cpu").install()
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     m(torch.randn(1, 4)).dtype
        torch.float32
    """

    model: nn.Module
    names: dict[str, str]
    device_type: str

    def install(self) -> Fp32Overrides:
        for name in self.names:
            module = self.model.get_submodule(name)
            if not getattr(module.forward, "_mixq_fp32", False):
                module.forward = _Fp32Forward(module.forward, self.device_type)
        return self

    def remove(self) -> None:
        for name in self.names:
            module = self.model.get_submodule(name)
            if getattr(module.__dict__.get("forward"), "_mixq_fp32", False):
                del module.forward

    def modules(self) -> Sequence[nn.Module]:
        return [self.model.get_submodule(n) for n in self.names]


class OutputCast:
    """Forward hook casting a model's 16-bit floating outputs to ``dtype`` while autocast is on.

    Containers keep their types (a Hugging Face ``ModelOutput`` stays one, ``.loss`` and all): see
    :func:`mixq.amp.tree.cast_floating`.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device_type: str) -> None:
        self.dtype, self.device_type = dtype, device_type
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if torch.is_autocast_enabled(self.device_type):
            return cast_floating(output, self.dtype)
        return output

    def remove(self) -> None:
        self.handle.remove()
