"""Attention logits too sharp for int8 inputs: which projections feeding a Softmax through a MatMul stay float.

A Softmax is shift-invariant but not scale-invariant: its output moves with the *absolute* error of its input,
measured in nats. Attention logits are ``s = alpha * q · kᵀ``; rounding ``q`` to a grid of step ``Δq`` moves a
logit by up to ``alpha * Δq * max|k|`` per element. With the usual ``alpha = 1/sqrt(d)`` and unit-scale ``q``,
``k`` that is about a hundredth of a nat; a model without the ``1/sqrt(d)`` (T5) or with large activations has
logits in the hundreds, where one int8 step of ``q`` moves a logit by several nats and rounding alone reorders
near-tied attention rows (a random T5 encoder at 10-15 nats: relative error 0.178 vs fp32 at length 13,
0.028 with its q and k float).

:func:`logit_gains` finds, in one forward pass over a probe batch, each layer whose output reaches a Softmax's
input (or ``scaled_dot_product_attention``'s scores) through a MatMul of two activations, with the largest logit
move per unit of error in one element of its output (``alpha * max|other operand|``, times any constant or
elementwise factors on the way). :func:`sharp_layers` turns those gains and the layers' calibrated output steps
into the layers to keep float, each with its reason.
"""

from __future__ import annotations

import math
import operator
import types
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mixq.messages import first_line
from mixq.quant.calibration import Batch, call_model
from mixq.quant.modules.observed import ObservedMatMul

if TYPE_CHECKING:
    from mixq.quant.stages import Prepared

# A logit error of δ nats multiplies a probability's odds by e^δ. Rounding to nearest errs by at most half a step,
# so a step that moves a logit by θ errs by up to θ/2 there: at θ = 0.5 a probability may change by e^0.25 - 1 =
# 28%, an order of magnitude over the 1-3% relative error one int8 grid puts on an ordinary activation, and the
# ratio of two probabilities by up to e^0.5 = 1.65x, enough to reorder attention rows whose logits differ by less
# than half a nat. Typical transformers (1/sqrt(d), unit-scale q and k) sit one to two orders of magnitude below.
MAX_STEP_NATS = 0.5

# functions that rearrange, copy or cast one tensor: every element of the output is an element of the input
_REARRANGE = frozenset({
    "view", "reshape", "split", "chunk", "unbind", "squeeze", "unsqueeze", "contiguous", "transpose", "permute",
    "flatten", "unflatten", "__getitem__", "clone", "to", "float", "half", "bfloat16", "type_as", "narrow",
    "select", "view_as", "reshape_as", "t", "expand", "expand_as", "repeat", "repeat_interleave", "cat",
    "concat", "stack", "dropout", "neg", "__neg__", "masked_fill", "masked_fill_", "where", "swapaxes",
})
_ADDS = frozenset({"add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__", "sub_",
                   "__isub__"})
_MULS = frozenset({"mul", "__mul__", "__rmul__", "mul_", "__imul__"})
_DIVS = frozenset({"div", "__truediv__", "div_", "__itruediv__"})
_MATMULS = frozenset({"matmul", "__matmul__", "bmm"})
_SOFTMAXES = frozenset({"softmax", "_softmax", "log_softmax"})

Gains = dict[str, float]  # layer name -> logit move (nats) per unit of error in one element of its output


def _amax(value: object) -> float:
    """The largest magnitude of a tensor or number (a bound on what one element multiplies by)."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().abs().amax()) if value.numel() else 0.0
    return abs(float(value))  # type: ignore[arg-type]


class _Gains(TorchFunctionMode):
    """Carries, for each tensor made from target layers' outputs, each layer's gain on it (how far one unit of
    error in one element of that layer's output moves an element of the tensor, at most), through rearranging,
    adding and multiplying functions; a MatMul of two activations turns the gains into logit gains, which a
    Softmax then records."""

    def __init__(self) -> None:
        super().__init__()
        # id -> (a weak reference to the tensor, its gains, whether it holds logits); an entry leaves with its
        # tensor, so the pass keeps no activation alive and a reused id never inherits gains
        self.gains: dict[int, tuple[weakref.ref, Gains, bool]] = {}
        self.found: Gains = {}
        self.ranges: dict[str, tuple[float, float]] = {}  # each layer's output range in the probe pass

    def mark(self, tensor: object, name: str) -> None:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            return
        self._set(tensor, {name: 1.0}, False)
        low, high = self.ranges.get(name, (0.0, 0.0))  # the range a min-max grid (holding 0) would cover
        self.ranges[name] = (min(low, float(tensor.amin())), max(high, float(tensor.amax())))

    def of(self, value: object) -> tuple[Gains, bool]:
        entry = self.gains.get(id(value)) if isinstance(value, torch.Tensor) else None
        return (entry[1], entry[2]) if entry is not None and entry[0]() is value else ({}, False)

    def _set(self, tensor: torch.Tensor, gains: Gains, logits: bool) -> None:
        key = id(tensor)

        def forget(ref: weakref.ref) -> None:
            if self.gains.get(key, (None,))[0] is ref:
                del self.gains[key]

        self.gains[key] = (weakref.ref(tensor, forget), gains, logits)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func is F.scaled_dot_product_attention:
            self._sdpa(args, kwargs)
            return out
        gains, logits = self._through(name, args)
        if name in _SOFTMAXES and logits:
            for layer, gain in gains.items():
                self.found[layer] = max(self.found.get(layer, 0.0), gain)
        if gains and name not in _SOFTMAXES:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
                    self._set(leaf, gains, logits)
        return out

    def _through(self, name: str, args: tuple) -> tuple[Gains, bool]:
        """The gains on ``name(*args)``'s output, and whether it holds logits (a product of two activations)."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in _MATMULS and len(args) >= 2 and all(isinstance(a, torch.Tensor) for a in args[:2]) \
                and not any(isinstance(a, nn.Parameter) for a in args[:2]):
            return _product(self.of(args[0])[0], args[1], self.of(args[1])[0], args[0]), True
        if name in _REARRANGE or name in _SOFTMAXES:
            merged = [self.of(t) for t in tree_leaves(list(args)) if isinstance(t, torch.Tensor)]
            return _merge([g for g, _ in merged]), any(lg for _, lg in merged)
        if name in _ADDS:
            merged = [self.of(t) for t in tensors]
            return _merge([g for g, _ in merged], operator.add), any(lg for _, lg in merged)
        if name in _MULS or name in _DIVS:
            return self._scaled(name, args)
        return {}, False

    def _scaled(self, name: str, args: tuple) -> tuple[Gains, bool]:
        """Gains through ``a * b`` (one operand carries gains, the other multiplies them by at most its largest
        magnitude) or ``a / c`` (a number or a tensor without gains, by its smallest magnitude)."""
        if len(args) < 2:
            return {}, False
        (g_a, l_a), (g_b, l_b) = self.of(args[0]), self.of(args[1])
        if g_a and g_b:
            return {}, False  # a product of two carried tensors is not a logit MatMul
        carried, other, logits = (g_a, args[1], l_a) if g_a else (g_b, args[0], l_b)
        if not isinstance(other, (torch.Tensor, int, float)) or isinstance(other, bool):
            return {}, False
        if name in _DIVS:
            if not g_a:
                return {}, False
            smallest = float(other.detach().abs().amin()) if isinstance(other, torch.Tensor) else abs(float(other))
            factor = math.inf if smallest == 0 else 1.0 / smallest
        else:
            factor = _amax(other)
        return {k: v * factor for k, v in carried.items()}, logits

    def _sdpa(self, args: tuple, kwargs: dict) -> None:
        """``scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale)``: its scores are
        ``scale * q · kᵀ`` (``scale`` defaults to ``1/sqrt(d)``)."""
        q, k = args[0], args[1]
        scale = kwargs.get("scale", args[6] if len(args) > 6 else None)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        gains = _product(self.of(q)[0], k, self.of(k)[0], q)
        for layer, gain in gains.items():
            self.found[layer] = max(self.found.get(layer, 0.0), gain * scale)


def _merge(all_gains: list[Gains], combine: Any = max) -> Gains:
    """Gains of an output made from several tensors: a layer's largest (rearranging) or summed (adding) gain."""
    merged: Gains = {}
    for gains in all_gains:
        for layer, gain in gains.items():
            merged[layer] = combine(merged[layer], gain) if layer in merged else gain
    return merged


def _product(g_a: Gains, b: torch.Tensor, g_b: Gains, a: torch.Tensor) -> Gains:
    """Logit gains of ``a @ b``: an error in one element of ``a`` moves an output by at most ``max|b|`` times."""
    return _merge([{k: v * _amax(b) for k, v in g_a.items()}, {k: v * _amax(a) for k, v in g_b.items()}],
                  operator.add)


def probe_gains(model: nn.Module, probe: Batch, layers: list[str]) -> tuple[Gains, dict[str, tuple[float, float]]]:
    """``(gains, ranges)``: for each of ``layers`` (modules of ``model``) whose output reaches a Softmax through a
    MatMul of two activations, the largest logit move, in nats, per unit of error in one element of its output;
    and the (min, max) range each layer's output covered (0 included). One forward pass over ``probe`` in eval
    mode without gradients; ``model`` is not modified."""
    mode = _Gains()
    hooks = [model.get_submodule(name).register_forward_hook(lambda _m, _i, out, n=name: mode.mark(out, n))
             for name in layers]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), mode:
            call_model(model, probe)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return {name: mode.found[name] for name in layers if name in mode.found}, mode.ranges


def logit_gains(model: nn.Module, probe: Batch, layers: list[str]) -> Gains:
    """:func:`probe_gains`'s gains alone."""
    return probe_gains(model, probe, layers)[0]


_LOGIT_READERS = _SOFTMAXES | {"scaled_dot_product_attention"}  # where probe_gains records a gain


def _code_names(code: types.CodeType) -> Iterator[str]:
    """The names and string constants of ``code`` and of the code nested in it."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, str):
            yield const
        elif isinstance(const, types.CodeType):
            yield from _code_names(const)


def _names_reader(obj: object) -> bool:
    """Whether a function's code (nested code included) names a logit reader."""
    code = getattr(obj, "__code__", None)
    return code is not None and not set(_code_names(code)).isdisjoint(_LOGIT_READERS)


def _functions_named(fn: object) -> Iterator[object]:
    """The Python functions ``fn``'s code names: globals, and attributes of the modules it names (``F.pad``)."""
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    if code is None:
        return
    names = set(_code_names(code))
    modules = [scope[n] for n in names if isinstance(scope.get(n), types.ModuleType)]
    for f in [scope.get(n) for n in names] + [getattr(m, n, None) for m in modules for n in names]:
        if isinstance(f, types.FunctionType):
            yield f


def _in_torch(fn: object) -> bool:
    return str(getattr(fn, "__module__", "")).startswith("torch")


def _may_read(fn: object, seen: set[object]) -> bool:
    """Whether the Python function ``fn`` may call a logit reader: its code names one, or a function it names may;
    followed through code outside torch to any depth and one level into torch's own (whose functions call torch
    functions, which tracking sees whole)."""
    code = getattr(fn, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    if _names_reader(fn):
        return True
    return any(_names_reader(g) if _in_torch(fn) or _in_torch(g) else _may_read(g, seen)
               for g in _functions_named(fn))


def _leaf_may_read(cls: type, seen: set[object]) -> bool:
    """Whether a leaf module class (torch.nn's own: the trace does not enter it) may call a logit reader through one
    of its methods (e.g. ``nn.Softmax``, and ``nn.MultiheadAttention`` through ``F.multi_head_attention_forward``)."""
    return any(_may_read(f, seen) for c in cls.__mro__ if c not in (nn.Module, object) for v in vars(c).values()
               for f in _functions_of(v))


def _functions_of(attr: object) -> list[object]:
    """The Python functions a class attribute holds: a method, a static or class method, a property's accessors."""
    if isinstance(attr, (staticmethod, classmethod)):
        return [attr.__func__]
    if isinstance(attr, property):
        return [f for f in (attr.fget, attr.fset) if f is not None]
    return [attr] if isinstance(attr, types.FunctionType) else []


def reads_logits(model: nn.Module) -> bool:
    """Whether ``model``'s forward may call a Softmax or ``scaled_dot_product_attention``, the only calls at which
    :func:`probe_gains` records a gain. False only when a ``torch.fx`` trace of it records neither and neither
    its leaf modules (torch.nn's own) nor opaque functions (``fx.wrap``) may call one (:func:`_may_read`); True
    when the model does not trace. (The trace records the same top-level torch functions as the tracking
    mode sees: a function that dispatches on tensors, e.g. ``multi_head_attention_forward``, is one call to both.)"""
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001  (untraceable: probe it)
        return True
    seen: set[object] = set()
    leaves = {type(model.get_submodule(str(n.target))) for n in graph.nodes if n.op == "call_module"}
    for node in graph.nodes:
        if node.op == "call_method" and node.target in _LOGIT_READERS:
            return True
        if node.op == "call_function" and (getattr(node.target, "__name__", "") in _LOGIT_READERS
                                           or _may_read(node.target, seen)):
            return True
    return any(_leaf_may_read(cls, seen) for cls in leaves)


def checked_gains(model: nn.Module, probe: Batch, layers: list[str],
                  notes: list[str]) -> tuple[Gains, dict[str, tuple[float, float]]]:
    """:func:`probe_gains`, or nothing with a note in ``notes`` saying why the logits were not checked (a forward
    pass that fails under the tracking mode leaves every layer to the config). Without the probe pass where the
    model reads no logits (:func:`reads_logits`): no gains, and the ranges (read only for layers with gains) are
    not measured."""
    if not reads_logits(model):
        return {}, {}
    try:
        return probe_gains(model, probe, layers)
    except Exception as err:  # noqa: BLE001  (the check is advisory: quantization goes on without it)
        notes.append(f"attention logits not checked for int8 sensitivity ({type(err).__name__}: "
                     f"{first_line(err, limit=160)}): every layer keeps the precision its config gives it")
        return {}, {}


def sharp_layers(gains: Gains, steps: Mapping[str, float], limit: float | None = None) -> dict[str, str]:
    """The layers whose output grid step (``steps``: the calibrated scale of each layer's output) moves the
    attention logits it feeds by more than ``limit`` nats (default :data:`MAX_STEP_NATS`), each with the reason it
    stays float."""
    limit = MAX_STEP_NATS if limit is None else limit
    sharp = {}
    for name, gain in gains.items():
        move = gain * steps.get(name, 0.0)
        if move > limit:
            sharp[name] = (f"its output feeds attention logits that one int8 step of it moves by up to {move:.3g} "
                           f"nats (> {limit:g}), so rounding would reorder attention rows")
    return sharp


def sharp_logit_layers(prepared: Prepared) -> dict[str, str]:
    """The static layers of a calibrated ``prepared`` model to keep float because one step of their calibrated
    output grid moves attention logits by more than :data:`MAX_STEP_NATS` (:func:`sharp_layers`), plus, in graph
    mode, the integer MatMuls that read such a layer's output on that grid; each with its reason."""
    steps = {}
    for name in prepared.logit_gains:
        observer = getattr(prepared.model.get_submodule(name), "output_observer", None)
        if observer is not None and observer.has_data:
            steps[name] = float(observer.calculate_qparams()[0].max())
    sharp = sharp_layers(prepared.logit_gains, steps)
    outputs = {id(prepared.model.get_submodule(name).output_observer): name for name in sharp}
    for name in prepared.adds:  # graph mode: a MatMul reading a float layer's output would still round it
        module = prepared.model.get_submodule(name)
        if not isinstance(module, ObservedMatMul):
            continue
        read = [outputs[id(o)] for o in (module.a_observer, module.b_observer) if id(o) in outputs]
        if read:
            sharp[name] = f"it reads {read[0]}'s output, which stays float: {sharp[read[0]]}"
    return sharp
