"""The registry of weight-only methods, and the per-layer side of GPTQ and AWQ calibration: what each gathers
from a layer's inputs, and how it turns a group of layers that share an input into quantized weights (moved onto
the grid in place) plus group parameters.

A method registers itself once, with ``@register_method(name, *options)``; ``WeightMethod``'s names and option
checks, the CLI's ``--method`` choices and the docs' lists all come from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
from torch import nn

from mixq.quant.calibration import CalibrationError
from mixq.quant.modules.weight_only import GroupParams
from mixq.quant.spec import WeightMethod
from mixq.quant.weight_only.awq import can_fold_into, fold_scales, search_clip, search_scales
from mixq.quant.weight_only.blockwise import Group
from mixq.quant.weight_only.gptq import HessianAccumulator, gptq_quantize
from mixq.quant.weight_only.grid import Grid
from mixq.quant.weight_only.layers import in_out_features, set_weight_matrix, weight_matrix

AWQ_KEEP_ROWS = 4096  # input rows kept per layer for the AWQ searches
AWQ_SCALE_ROWS = 1024
AWQ_CLIP_ROWS = 256


def _rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` evenly spaced rows of ``x`` (all of them when it has fewer)."""
    if x.shape[0] <= count:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, count).round().long()]


class MethodWorker:
    """Statistics and quantization for one weight-only method over a model's layers."""

    name: ClassVar[str] = ""  # set by register_method
    options: ClassVar[tuple[str, ...]] = ()  # the WeightMethod fields this method reads (set by register_method)
    needs_data: ClassVar[bool] = True  # calibrates on data (False: nothing to gather, conversion rounds weights)
    sequential = True  # gather statistics per group, after earlier groups were quantized

    def __init__(self, model: nn.Module, grids: dict[str, Grid], method: WeightMethod,
                 params: dict[str, GroupParams], notes: list[str]) -> None:
        self.model, self.grids, self.method, self.params, self.notes = model, grids, method, params, notes

    def observe(self, name: str, x: torch.Tensor) -> None:
        x = x.detach()
        if not torch.isfinite(x).all():
            raise CalibrationError(f"layer {name!r} received NaN or inf activations during {self.method.name} "
                                   "calibration; check the model's weights and the calibration batches")
        self._observe(name, x.reshape(-1, x.shape[-1]).to(torch.float32))

    def _observe(self, name: str, x: torch.Tensor) -> None:
        raise NotImplementedError

    def quantize_groups(self, groups: list[Group]) -> None:
        raise NotImplementedError

    def _store(self, name: str, quantized: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        set_weight_matrix(self.model.get_submodule(name), quantized)
        self.params[name] = (scale, zero)


W = TypeVar("W", bound=type[MethodWorker])
_METHODS: dict[str, type[MethodWorker]] = {}


def register_method(name: str, *options: str) -> Callable[[W], W]:
    """Class decorator: register a weight-only method under ``name``; ``options`` are the ``WeightMethod`` fields
    it reads (any other field left off its default is refused). Example: ``@register_method("gptq", "damp")``."""
    if name in _METHODS:
        raise ValueError(f"weight method {name!r} is already registered (by {_METHODS[name].__name__})")

    def decorate(cls: W) -> W:
        cls.name, cls.options = name, options
        _METHODS[name] = cls
        return cls

    return decorate


def method_names() -> tuple[str, ...]:
    """Every registered weight-only method, in registration order (``rtn`` first)."""
    return tuple(_METHODS)


def method_class(name: str) -> type[MethodWorker]:
    """The registered class of method ``name``; an unknown name is refused with the registered ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown weight method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


@register_method("rtn")
class RTNWorker(MethodWorker):
    """Round to nearest: data-free, so there is nothing to gather; conversion rounds each weight on its grid."""

    needs_data = False


@register_method("gptq", "damp", "act_order", "blockwise")
class GPTQWorker(MethodWorker):
    """GPTQ: one Hessian per layer, quantized group by group in execution order."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hessians: dict[str, HessianAccumulator] = {}

    def _observe(self, name: str, x: torch.Tensor) -> None:
        if name not in self.hessians:
            self.hessians[name] = HessianAccumulator(x.shape[-1])
        self.hessians[name].add(x)

    def quantize_groups(self, groups: list[Group]) -> None:
        for group in groups:
            for name in group.names:
                acc = self.hessians.pop(name, None)
                if acc is None or acc.rows == 0:
                    raise CalibrationError(f"layer {name!r} was never executed during gptq calibration; exclude "
                                           "it or check that the calibration batches reach it")
                weight = weight_matrix(self.model.get_submodule(name))
                self._store(name, *gptq_quantize(weight, acc.result(), self.grids[name], damp=self.method.damp,
                                                 act_order=self.method.act_order))


@register_method("awq", "clip", "blockwise")
class AWQWorker(MethodWorker):
    """AWQ: input samples of every layer of a block from one pass; scales folded group by group, then clipping."""

    sequential = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.kept: dict[str, int] = {}

    def _observe(self, name: str, x: torch.Tensor) -> None:
        room = AWQ_KEEP_ROWS - self.kept.get(name, 0)
        if room > 0:
            self.samples.setdefault(name, []).append(x[:room].clone())
            self.kept[name] = self.kept.get(name, 0) + min(room, x.shape[0])

    def _sample(self, name: str) -> torch.Tensor:
        if name not in self.samples:
            raise CalibrationError(f"layer {name!r} was never executed during awq calibration; exclude it or check "
                                   "that the calibration batches reach it")
        return torch.cat(self.samples[name])

    def quantize_groups(self, groups: list[Group]) -> None:
        inputs: dict[str, torch.Tensor] = {}
        for group in groups:
            x = self._sample(group.names[0])
            producer = self.model.get_submodule(group.producer) if group.producer else None
            layers = [self.model.get_submodule(n) for n in group.names]
            k = in_out_features(layers[0])[0]
            if producer is not None and can_fold_into(producer, k) and group.producer not in self.params:
                weights = [weight_matrix(layer).detach().to(torch.float32) for layer in layers]
                scales = search_scales(_rows(x, AWQ_SCALE_ROWS), weights, self.grids[group.names[0]])
                fold_scales(producer, layers, scales)
                x = x / scales
            else:
                self.notes.append(f"awq: {', '.join(group.names)} read an input no scale can be folded into; "
                                  "clipping search only")
            for name in group.names:
                inputs[name] = x
        for group in groups:
            for name in group.names:
                self.samples.pop(name, None)
                grid = self.grids[name]
                weight = weight_matrix(self.model.get_submodule(name)).detach().to(torch.float32)
                if self.method.clip:
                    scale, zero = search_clip(_rows(inputs[name], AWQ_CLIP_ROWS), weight, grid)
                else:
                    scale, zero = grid.params(weight)
                self._store(name, grid.dequantize_matrix(weight, scale, zero), scale, zero)
