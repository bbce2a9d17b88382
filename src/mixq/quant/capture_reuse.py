"""One ``torch.export`` capture for identical module instances: what a capture depends on, and a capture's graph
rebound to another instance's tensors.

``capture_compute`` exports each module that computes outside registered layers on the inputs of its first call
(about 50 ms each, warm; a pip package's same-padding ``Conv2d`` subclass is 49 captures in EfficientNet-Lite0).
Non-strict ``torch.export`` runs the module's Python ``forward`` on fake tensors: the graph it records depends on
the module tree's classes (their code), every non-tensor attribute, the names, shapes, dtypes and strides of its
parameters and buffers (never their values, which are fake), the inputs' structure, shapes, dtypes and non-tensor
values, and which of all these tensors share memory. :func:`signature` is all of that as one hashable key, or None
where anything in it is not plain data (a callable, a hook, a tensor attribute that is neither parameter nor
buffer, a forward set on the instance): such a module is always captured alone. Two instances with one key record
the same graph, so the second reuses the first's (:func:`rebound`: a copy of the graph reading the second
instance's own parameters and buffers). What the key cannot see: a ``forward`` reading mutable global state, which
would have to change between two captures of one ``quantize`` call to matter.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from mixq.quant.graft import no_leafspec_warning

_STATE = ("_parameters", "_buffers", "_modules")
_SCALARS = (bool, int, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


class _NotPlain(Exception):
    """A value a capture may depend on in a way its metadata does not show."""


def _tensor_key(t: torch.Tensor) -> tuple:
    return (type(t), tuple(t.shape), t.dtype, t.stride(), t.device, t.layout, t.requires_grad)


def _value_key(v: Any) -> Hashable:
    """A hashable stand-in for ``v`` equal for values a capture cannot tell apart; raises ``_NotPlain`` for
    anything that is not plain data."""
    if isinstance(v, _SCALARS):
        return (type(v), v)
    if isinstance(v, float):
        return (float, v.hex())  # tells -0.0 from 0.0
    if isinstance(v, torch.Tensor):
        return ("tensor", *_tensor_key(v))
    if isinstance(v, (tuple, list)):
        return (type(v), tuple(_value_key(x) for x in v))
    if isinstance(v, dict):
        return (type(v), tuple((_value_key(k), _value_key(x)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return (type(v), tuple(sorted(repr(_value_key(x)) for x in v)))
    raise _NotPlain(type(v).__name__)


def _attr_key(v: Any) -> Hashable:
    if isinstance(v, torch.Tensor):  # read by value (a constant of the graph): no reuse
        raise _NotPlain("a tensor attribute that is neither parameter nor buffer")
    return _value_key(v)


def _module_key(m: nn.Module) -> Hashable:
    if "forward" in m.__dict__:
        raise _NotPlain("forward set on the instance")
    attrs = tuple((k, _attr_key(v)) for k, v in m.__dict__.items() if k not in _STATE)
    tensors = tuple((k, None if t is None else _tensor_key(t))
                    for k, t in [*m._parameters.items(), *m._buffers.items()])
    return type(m), attrs, tensors


def signature(module: nn.Module, args: tuple, kwargs: dict) -> Hashable | None:
    """What capturing ``module`` on ``(args, kwargs)`` depends on (see the module docstring), or None when it may
    depend on something else (the module is then captured alone)."""
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None
    try:
        tree = tuple((name, _module_key(m)) for name, m in module.named_modules(remove_duplicate=False))
        return tree, _value_key(args), _value_key(kwargs), _sharing(module, args, kwargs)
    except Exception:  # noqa: BLE001  (not plain data, or a tensor without strides or storage: captured alone)
        return None


def _sharing(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, ...]:
    """Which of the module's parameters and buffers and the call's input tensors share memory (tied weights, one
    tensor passed twice): for each, the index of the first one on the same storage."""
    tensors = [t for m in module.modules() for t in [*m._parameters.values(), *m._buffers.values()]
               if t is not None] + [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    first: dict[int, int] = {}
    return tuple(first.setdefault(t.untyped_storage().data_ptr(), i) for i, t in enumerate(tensors))


def _tensor_at(module: nn.Module, target: str) -> torch.Tensor | None:
    """The parameter or buffer of ``module`` at ``target`` (a dotted path), else None."""
    owner, _, name = target.rpartition(".")
    try:
        m = module.get_submodule(owner) if owner else module
    except AttributeError:
        return None
    return m._parameters.get(name, m._buffers.get(name))


def reads_own_tensors(gm: fx.GraphModule, module: nn.Module) -> bool:
    """Whether every tensor ``gm``'s graph reads is ``module``'s parameter or buffer of the same name (so the graph
    can read another instance's tensors by the same names)."""
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            own = _tensor_at(module, str(node.target))
            if own is None or _tensor_at(gm, str(node.target)) is not own:
                return False
    return True


def _owner(gm: nn.Module, target: str) -> tuple[nn.Module, str]:
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def rebound(template: fx.GraphModule, module: nn.Module, class_name: str) -> fx.GraphModule:
    """A graph module running a copy of ``template``'s graph on ``module``'s own parameters and buffers (each
    registered as ``template`` registers it); other attributes (export's guard function) are shared."""
    with no_leafspec_warning():
        graph = copy.deepcopy(template.graph)
    gm = fx.GraphModule(template, graph, class_name)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            owner, name = _owner(gm, str(node.target))
            store = owner._parameters if name in owner._parameters else owner._buffers
            store[name] = _tensor_at(module, str(node.target))
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(template, attr):
            setattr(gm, attr, getattr(template, attr))
    return gm
