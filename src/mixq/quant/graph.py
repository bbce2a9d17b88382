"""Graph mode for static quantization: what a ``torch.fx`` trace of the model adds to layer-by-layer quantization.

With the dataflow graph mixq (1) quantizes residual ``a + b`` (+ ReLU) as QLinearAdd instead of leaving it float,
and (2) gives each consumer the *producer's* output observer for its input, looking through ops that do not change
values (max pooling, flatten/reshape, identity, dropout). Every tensor then has one scale, the exported graph has
one Q/DQ pair per tensor, and ONNX Runtime runs a ResNet block as QLinearConv -> QLinearConv -> QLinearAdd without
float detours or layout transposes. Models that ``torch.fx`` cannot trace (most Hugging Face models) keep the
layer-by-layer path; the summary says which path was taken.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.quant.modules.observed import ObservedAdd, ObservedLayer
from mixq.quant.observers import Observer

_ADDS = {operator.add, operator.iadd, torch.add}
_RELU_FUNCTIONS = {torch.relu, F.relu}
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Flatten, nn.Dropout)
_PASS_FUNCTIONS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, torch.reshape}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (ObservedLayer, ObservedAdd)) or getattr(m, "mixq_leaf", False)
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """``(graph module, "")`` or ``(None, why not)``; the graph module shares submodules with ``model``."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001  (any tracing failure means: fall back to eager mode)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return fx.GraphModule(model, graph, type(model).__name__), ""


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A ReLU call site. Fusing removes only this node, so a ReLU module shared by several calls is fine."""
    if node.op == "call_module":
        return isinstance(_module(gm, node), nn.ReLU)
    return (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
        node.op == "call_method" and node.target == "relu")


def _sole_relu_user(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and _is_relu(gm, users[0]) else None


def fuse_relus(gm: fx.GraphModule) -> int:
    """Fold a ReLU call that is the only reader of an observed layer's output into that layer."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    fused = 0
    for node in list(gm.graph.nodes):
        layer = _module(gm, node)
        if not isinstance(layer, ObservedLayer) or layer.relu or calls[node.target] != 1:
            continue
        tail = node  # look past folded BatchNorms (now Identity) and eval-mode Dropout
        while len(tail.users) == 1 and isinstance(_module(gm, next(iter(tail.users))), (nn.Identity, nn.Dropout)):
            tail = next(iter(tail.users))
        relu = _sole_relu_user(gm, tail)
        if relu is not None:
            layer.relu = True
            relu.replace_all_uses_with(node)
            gm.graph.erase_node(relu)
            fused += 1
    gm.recompile()
    return fused


def quantize_adds(gm: fx.GraphModule, make_observer: Callable[[str], Observer],
                  add_cls: type[ObservedAdd] = ObservedAdd) -> list[str]:
    """Replace tensor ``a + b`` nodes (and a ReLU that only they feed) with ``add_cls`` (``ObservedAdd``) modules."""
    names = []
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        relu = _sole_relu_user(gm, node)
        name = f"mixq_add_{len(names)}"
        observed = add_cls(make_observer(f"{name} (a)"), make_observer(f"{name} (b)"),
                               make_observer(f"{name} (output)"), relu=relu is not None)
        gm.add_submodule(name, observed)
        with gm.graph.inserting_after(relu or node):
            replacement = gm.graph.call_module(name, tuple(node.args))
        (relu or node).replace_all_uses_with(replacement)
        if relu is not None:
            gm.graph.erase_node(relu)
        gm.graph.erase_node(node)
        names.append(name)
    gm.recompile()
    return names


def _source(gm: fx.GraphModule, node: object) -> nn.Module | None:
    """The observed producer whose output reaches ``node`` unchanged, if any."""
    while isinstance(node, fx.Node):
        module = _module(gm, node)
        if isinstance(module, (ObservedLayer, ObservedAdd)):
            return module
        passes = (isinstance(module, _PASS_MODULES)
                  or (node.op == "call_function" and node.target in _PASS_FUNCTIONS)
                  or (node.op == "call_method" and node.target in _PASS_METHODS))
        if not passes or not node.args:
            return None
        node = node.args[0]
    return None


def share_observers(gm: fx.GraphModule) -> int:
    """Point each observed input at its producer's output observer; returns how many inputs now share."""
    shared = 0
    for node in gm.graph.nodes:
        consumer = _module(gm, node)
        if not isinstance(consumer, (ObservedLayer, ObservedAdd)):
            continue
        for index, arg in enumerate(node.args[:2 if isinstance(consumer, ObservedAdd) else 1]):
            producer = _source(gm, arg)
            if producer is not None:
                consumer.share_input(index, producer.output_observer)
                shared += 1
    return shared


def apply_graph_mode(model: nn.Module, make_observer: Callable[[str], Observer], notes: list[str],
                     add_cls: type[ObservedAdd] = ObservedAdd) -> tuple[nn.Module, list[str]]:
    """Trace a model whose layers are already wrapped (``ObservedLayer``), then fuse ReLU call sites, turn adds into
    ``add_cls`` and share observers along the dataflow. Returns ``(model or its graph module, add names)`` and
    appends to ``notes`` what was done, or why tracing failed (the model is then returned unchanged)."""
    graph, why = trace(model)
    if graph is None:
        notes.append(f"torch.fx could not trace the model ({why}); quantized layer by layer, so "
                     "elementwise ops between layers stay float")
        return model, []
    relus = fuse_relus(graph)
    adds = quantize_adds(graph, make_observer, add_cls)
    shared = share_observers(graph)
    notes.append(f"graph mode (torch.fx): {len(adds)} adds quantized, {relus} more ReLUs fused, {shared} "
                 "inputs share their producer's scale")
    return (graph, adds) if adds or relus else (model, [])
