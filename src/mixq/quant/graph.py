"""Graph mode for static quantization: what a ``torch.fx`` trace of the model adds to layer-by-layer quantization.

With the dataflow graph mixq (1) quantizes residual ``a + b`` (+ ReLU) as QLinearAdd instead of leaving it float,
and (2) gives each consumer the *producer's* output observer for its input, looking through ops that do not change
values (max pooling, flatten/reshape, identity, dropout). Every tensor then has one scale, the exported graph has
one Q/DQ pair per tensor, and ONNX Runtime runs a ResNet block as QLinearConv -> QLinearConv -> QLinearAdd without
float detours or layout transposes. Models that ``torch.fx`` cannot trace (most Hugging Face models) are captured
with ``torch.export`` instead (``mixq.quant.graph_export``); on that graph mixq also (3) quantizes MatMuls of two
activations (attention's Q·Kᵀ and probabilities·V) as integer kernels, with a constant factor after one (1/√d)
folded into its output scale, (4) quantizes an add only where an integer kernel reads its sum (a residual add
feeding a LayerNorm gains nothing from int8 and loses precision), and (5) leaves a Linear's output float where no
integer kernel reads it, so no Q/DQ pair is emitted for nothing. Models that neither can capture keep the
layer-by-layer path; the summary says which path was taken and why.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.messages import first_line
from mixq.quant.eager_dataflow import share_inputs, share_observers_eager
from mixq.quant.fusion import relu_bound
from mixq.quant.modules.conv_args import integer_padding
from mixq.quant.modules.observed import ObservedAdd, ObservedLayer, ObservedMatMul
from mixq.quant.observers import Observer

aten = torch.ops.aten
_ADDS = {operator.add, operator.iadd, torch.add, aten.add.Tensor}
_MATMULS = {torch.matmul, operator.matmul, aten.matmul.default, torch.bmm, aten.bmm.default}  # bmm: matmul of 3-D
_MULS = {operator.mul, torch.mul, aten.mul.Tensor, aten.mul.Scalar}
_RELU_FUNCTIONS = {torch.relu, F.relu, aten.relu.default}
# clamps that are a ReLU with an upper bound when their lower bound is 0: (function, default min, default max)
_CLAMP_FUNCTIONS = {F.relu6: (0.0, 6.0), F.hardtanh: (-1.0, 1.0), aten.hardtanh.default: (-1.0, 1.0),
                    aten.hardtanh_.default: (-1.0, 1.0)}
_PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Flatten, nn.Dropout)
_PASS_FUNCTIONS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, torch.reshape,
                   # the same value-preserving ops as torch.export records them
                   aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
                   aten.permute.default, aten.contiguous.default, aten.clone.default, aten.dropout.default,
                   aten.expand.default, aten.unsqueeze.default, aten.flatten.using_ints}
_PASS_METHODS = {"view", "reshape", "flatten", "contiguous"}
_OBSERVED = (ObservedLayer, ObservedAdd, ObservedMatMul)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (ObservedLayer, ObservedAdd)) or getattr(m, "mixq_leaf", False)
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """``(graph module, "")`` or ``(None, why not)``; the graph module shares submodules with ``model``."""
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001  (any tracing failure means: fall back to eager mode)
        return None, f"{type(err).__name__}: {first_line(err, limit=160)}"
    return fx.GraphModule(model, graph, type(model).__name__), ""


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]


def _relu_bound(gm: fx.GraphModule, node: fx.Node) -> tuple[bool, float | None]:
    """``(is a ReLU call site, its upper bound)``: ReLU -> ``(True, None)``; ReLU6 and hardtanh(0, hi) modules or
    functions -> ``(True, hi)``. Fusing removes only this node, so a module shared by several calls is fine."""
    if node.op == "call_module":
        return relu_bound(_module(gm, node))
    if (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
            node.op == "call_method" and node.target == "relu"):
        return True, None
    if node.op != "call_function" or node.target not in _CLAMP_FUNCTIONS:
        return False, None
    low, high = _CLAMP_FUNCTIONS[node.target]  # type: ignore[index]
    if node.target is not F.relu6:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", low)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", high)
    fusable = isinstance(low, (int, float)) and isinstance(high, (int, float)) and low == 0 and high > 0
    return (True, float(high)) if fusable else (False, None)


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A plain ReLU call site (what an add can fuse)."""
    return _relu_bound(gm, node) == (True, None)


def _sole_relu_user(gm: fx.GraphModule, node: fx.Node, bounded: bool = False) -> fx.Node | None:
    """The ReLU (with ``bounded``, also a ReLU6 / hardtanh(0, hi)) that is ``node``'s only user, if any."""
    users = list(node.users)
    if len(users) != 1:
        return None
    fusable, upper = _relu_bound(gm, users[0])
    return users[0] if fusable and (bounded or upper is None) else None


def _module_calls(gm: fx.GraphModule) -> dict[str, int]:
    """How many times the graph calls each module (a module called once can take a fused op)."""
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1  # type: ignore[index]
    return calls


def fuse_relus(gm: fx.GraphModule) -> int:
    """Fold a ReLU call (or a ReLU6 / hardtanh(0, hi): ``relu_max``) that is the only reader of an observed layer's
    output into that layer."""
    calls = _module_calls(gm)
    fused = 0
    for node in list(gm.graph.nodes):
        layer = _module(gm, node)
        if not isinstance(layer, ObservedLayer) or layer.relu or calls[node.target] != 1:
            continue
        tail = node  # look past folded BatchNorms (now Identity) and eval-mode Dropout
        while len(tail.users) == 1 and isinstance(_module(gm, next(iter(tail.users))), (nn.Identity, nn.Dropout)):
            tail = next(iter(tail.users))
        relu = _sole_relu_user(gm, tail, bounded=True)
        if relu is not None:
            layer.relu, layer.relu_max = True, _relu_bound(gm, relu)[1]
            relu.replace_all_uses_with(node)
            gm.graph.erase_node(relu)
            fused += 1
    gm.recompile()
    return fused


_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)
_PAD_FUNCTIONS = {F.pad, aten.constant_pad_nd.default, aten.pad.default}


def _zero_pad(gm: fx.GraphModule, node: object) -> list[int] | None:
    """The ``F.pad``-order amounts of ``node`` when it pads its input with zeros (ZeroPad / ConstantPad(0) modules,
    ``F.pad`` / ATen constant pads), else None."""
    if not isinstance(node, fx.Node):
        return None
    module = _module(gm, node)
    if isinstance(module, _PAD_MODULES):
        plain = type(module).forward is nn.modules.padding._ConstantPadNd.forward  # not a subclass's own forward
        return list(module.padding) if plain and module.value == 0 else None
    if node.op != "call_function" or node.target not in _PAD_FUNCTIONS or len(node.args) < 2:
        return None
    names = ("mode", "value") if node.target is not aten.constant_pad_nd.default else ("value",)
    extra = dict(zip(names, node.args[2:], strict=False)) | dict(node.kwargs)
    if extra.get("mode", "constant") != "constant" or extra.get("value") not in (None, 0, 0.0):
        return None
    pad = node.args[1]
    return list(pad) if isinstance(pad, (list, tuple)) and all(type(p) is int for p in pad) else None


def fold_pads(gm: fx.GraphModule) -> int:
    """Fold a zero pad whose only reader is an observed convolution into that convolution's padding (TF-"same"
    padding written as ``ZeroPad2d`` or ``F.pad`` before a ``padding=0`` conv): the runtime then pads the
    quantized input inside its integer kernel (ONNX ``Conv`` ``pads`` hold begins and ends separately) instead of
    running a float ``Pad`` between a DequantizeLinear and a QuantizeLinear. The convolution computes the same:
    symmetric amounts become its ``padding``, asymmetric ones its ``mixq_pads`` (begins, then ends). Returns how
    many pads were folded."""
    calls = _module_calls(gm)
    folded = 0
    for node in list(gm.graph.nodes):
        observed = _module(gm, node)
        conv = observed.layer if isinstance(observed, ObservedLayer) else None
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or conv.padding_mode != "zeros" or calls[node.target] != 1:
            continue
        dims, pad_node = conv.weight.dim() - 2, node.args[0] if node.args else None
        amounts, own = _zero_pad(gm, pad_node), integer_padding(conv)
        if (amounts is None or own is None or len(amounts) != 2 * dims or min(amounts) < 0
                or getattr(conv, "mixq_pads", None) or len(pad_node.users) != 1):  # type: ignore[union-attr]
            continue
        begin = [own[a] + amounts[2 * (dims - 1 - a)] for a in range(dims)]  # F.pad lists the last axis first
        end = [own[a] + amounts[2 * (dims - 1 - a) + 1] for a in range(dims)]
        conv.padding = tuple(begin) if begin == end else (0,) * dims
        if begin != end:
            conv.mixq_pads = begin + end
        node.args = (pad_node.args[0], *node.args[1:])  # type: ignore[union-attr]
        gm.graph.erase_node(pad_node)  # type: ignore[arg-type]
        folded += 1
    gm.recompile()
    return folded


def _is_float(node: object) -> bool:
    """Whether an exported node's recorded value is a float tensor (fx traces record none: assume so)."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value is None or (isinstance(value, torch.Tensor) and value.is_floating_point())


def _feeds_integer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether an observed module reads ``node``'s value (directly or through value-preserving ops)."""
    todo, seen = list(node.users), set()
    while todo:
        user = todo.pop()
        if user in seen:
            continue
        seen.add(user)
        if isinstance(_module(gm, user), _OBSERVED):
            return True
        if _passes(gm, user):
            todo.extend(user.users)
    return False


def quantize_adds(gm: fx.GraphModule, make_observer: Callable[[str], Observer],
                  add_cls: type[ObservedAdd] = ObservedAdd, only_feeding_integer: bool = False) -> list[str]:
    """Replace tensor ``a + b`` nodes (and a ReLU that only they feed) with ``add_cls`` (``ObservedAdd``) modules;
    with ``only_feeding_integer``, only adds whose sum an observed module reads."""
    names = []
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target in ("add", "add_"))
        if not is_add or len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            continue
        if only_feeding_integer and not (all(_is_float(a) for a in node.args) and _feeds_integer(gm, node)):
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


def quantize_matmuls(gm: fx.GraphModule, make_observer: Callable[[str], Observer],
                     matmul_cls: type[ObservedMatMul] = ObservedMatMul) -> list[str]:
    """Replace MatMuls of two float activations (not of a parameter) with ``matmul_cls`` (``ObservedMatMul``)
    modules named ``<owning module>.mixq_matmul_<k>``, so an exclude pattern for that module covers them too."""
    names: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _MATMULS or len(node.args) != 2 or node.kwargs:
            continue
        a, b = node.args
        if not all(isinstance(x, fx.Node) and x.op != "get_attr" and _is_float(x) for x in (a, b)):
            continue
        stack = list(node.meta.get("nn_module_stack", {}).values())
        owner = stack[-1][0] if stack else ""
        k = sum(n.startswith(f"{owner}.mixq_matmul_") for n in names) if owner else len(names)
        name = f"{owner}.mixq_matmul_{k}" if owner else f"mixq_matmul_{k}"
        gm.add_submodule(name, matmul_cls(make_observer(f"{name} (a)"), make_observer(f"{name} (b)")))
        with gm.graph.inserting_after(node):
            replacement = gm.graph.call_module(name, (a, b))
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
        names.append(name)
    gm.recompile()
    return names


def fold_matmul_scales(gm: fx.GraphModule) -> int:
    """Fold a constant factor that is the only use of an ``ObservedMatMul``'s output (attention's
    ``(Q·Kᵀ) * 1/√d``) into that MatMul's ``alpha``: the float model computes the same product, and the quantized
    one applies the factor in the integer kernel's output multiplier instead of a float Mul over every score
    (``mixq.quant.kernels.qmatmul``). Returns how many were folded."""
    folded = 0
    for node in list(gm.graph.nodes):
        matmul = _module(gm, node)
        if not isinstance(matmul, ObservedMatMul) or matmul.alpha != 1.0 or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op != "call_function" or user.target not in _MULS or user.kwargs or len(user.args) != 2:
            continue
        factor = user.args[1] if user.args[0] is node else user.args[0]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            continue
        matmul.alpha = float(factor)
        user.replace_all_uses_with(node)
        gm.graph.erase_node(user)
        folded += 1
    gm.recompile()
    return folded


def _passes(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` passes its first argument's values through unchanged (reshapes, dropout in eval, ...)."""
    return (isinstance(_module(gm, node), _PASS_MODULES)
            or (node.op == "call_function" and node.target in _PASS_FUNCTIONS)
            or (node.op == "call_method" and node.target in _PASS_METHODS))


def _source(gm: fx.GraphModule, node: object) -> nn.Module | None:
    """The observed producer whose output reaches ``node`` unchanged, if any."""
    while isinstance(node, fx.Node):
        module = _module(gm, node)
        if isinstance(module, (ObservedLayer, ObservedAdd)):
            return module
        if not _passes(gm, node) or not node.args:
            return None
        node = node.args[0]
    return None


def producer(gm: fx.GraphModule, node: object) -> nn.Module | None:
    """The module (any kind) whose output reaches ``node`` unchanged through value-preserving ops, if any."""
    while isinstance(node, fx.Node):
        passes = _passes(gm, node)
        module = _module(gm, node)
        if module is not None and not passes:
            return module
        if not passes or not node.args:
            return None
        node = node.args[0]
    return None


def share_observers(gm: fx.GraphModule) -> int:
    """Point each observed input at its producer's output observer; returns how many inputs now share."""
    return sum(share_inputs(consumer, node.args, lambda arg: _source(gm, arg)) for node in gm.graph.nodes
               if isinstance(consumer := _module(gm, node), _OBSERVED))


def keep_float_outputs(gm: fx.GraphModule) -> int:
    """Mark observed Linear layers whose output no observed module reads (its observer is shared with no consumer)
    as ``float_output``: they are converted without requantizing their output. Returns how many."""
    read = {id(m.input_observer) for m in gm.modules() if isinstance(m, ObservedLayer) and m.shared_input}
    for m in gm.modules():
        if isinstance(m, (ObservedAdd, ObservedMatMul)):
            read |= {id(o) for o, shared in zip((m.a_observer, m.b_observer), m.shared, strict=True) if shared}
    marked = 0
    for m in gm.modules():
        if isinstance(m, ObservedLayer) and isinstance(m.layer, nn.Linear) and id(m.output_observer) not in read:
            m.float_output, marked = True, marked + 1
    return marked


def apply_graph_mode(model: nn.Module, make_observer: Callable[[str], Observer], notes: list[str],
                     add_cls: type[ObservedAdd] = ObservedAdd, matmul_cls: type[ObservedMatMul] = ObservedMatMul,
                     exported: bool = False,
                     untraceable: str = "", float_outputs: bool = True,
                     probe: Callable[[nn.Module], object] | None = None) -> tuple[nn.Module, list[str]]:
    """Trace a model whose layers are already wrapped (``ObservedLayer``), then fuse ReLU call sites, turn adds into
    ``add_cls`` and share observers along the dataflow. Returns ``(model or its graph module, add names)`` and
    appends to ``notes`` what was done, or why tracing failed (the model is then returned unchanged).

    ``exported``: ``model`` is already a graph module captured by ``torch.export`` (``graph_export``); MatMuls of
    two activations are quantized too (their names are returned with the adds), adds only where an integer kernel
    reads the sum, and Linear outputs no integer kernel reads stay float. ``add_cls`` / ``matmul_cls``: the modules
    adds and MatMuls become (QAT passes its fake-quantizing ones). ``untraceable``: why ``torch.fx`` failed
    on this model, when the caller already tried (it is not traced again). ``float_outputs=False``: exported
    graphs keep every Linear's output on its int8 grid too (what LiteRT's int8 kernels need). ``probe`` (one
    forward pass) lets a model quantized layer by layer share observers along the tensors that go straight from one
    layer into the next (:func:`mixq.quant.eager_dataflow.share_observers_eager`).
    """
    if exported:
        graph: fx.GraphModule | None = model  # type: ignore[assignment]
    elif untraceable:
        graph, why = None, untraceable
    else:
        graph, why = trace(model)
    if graph is None:
        shared = share_observers_eager(model, probe) if probe is not None else 0
        notes.append(f"torch.fx could not trace the model ({why}); quantized layer by layer, so "
                     f"elementwise ops between layers stay float ({shared} inputs share their producer's scale)")
        return model, []
    pads = fold_pads(graph)
    relus = fuse_relus(graph)
    matmuls = quantize_matmuls(graph, make_observer, matmul_cls) if exported else []
    scales = fold_matmul_scales(graph) if matmuls else 0
    adds = quantize_adds(graph, make_observer, add_cls, only_feeding_integer=exported)
    shared = share_observers(graph)
    if exported:
        floats = keep_float_outputs(graph) if float_outputs else 0
        notes.append(f"graph mode (torch.export): {len(matmuls)} activation MatMuls and {len(adds)} adds "
                     f"quantized, {scales} constant factors (attention's 1/sqrt(d)) folded into their MatMul's "
                     f"output scale, {relus} more ReLUs fused, {shared} inputs share their producer's scale, "
                     f"{floats} Linear outputs stay float (no integer kernel reads them), {pads} zero pads merged "
                     "into their convolution")
        return graph, matmuls + adds
    notes.append(f"graph mode (torch.fx): {len(adds)} adds quantized, {relus} more ReLUs fused, {shared} "
                 f"inputs share their producer's scale, {pads} zero pads merged into their convolution")
    return (graph, adds) if adds or relus or pads else (model, [])
