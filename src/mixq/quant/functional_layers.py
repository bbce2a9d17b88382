"""Layers whose ``forward`` pads (or otherwise prepares) the input and then calls ``F.conv*``/``F.linear`` on their
own parameters, quantized as what they compute.

A subclass of ``nn.Conv2d`` that overrides ``forward`` is not a ``Conv2d`` to mixq (``kind_of``): a quantized copy
of its base would drop what the override computes. The most common such override in the wild is TensorFlow-"same"
padding (EfficientNet and MobileNet ports: a ``ZeroPad2d`` member applied before ``F.conv2d``, since asymmetric
padding has no ``nn.Conv2d`` form). Its ``torch.fx`` trace shows exactly what it computes: the padding, then a
functional convolution whose weight and bias are the layer's own parameters. ``lift_functional_layers`` rewrites
each such call into a call of a plain ``nn.Conv*``/``nn.Linear`` holding the same parameters, registered under the
layer's own name (so ``exclude`` patterns and the summary keep naming it), and moves the layer's submodules (the
padding) beside it. The model then computes the same function with the same ops on the same tensors, and BatchNorm
folding, observers and the quantized modules treat the layer like any other. A call whose weight is computed (weight
standardisation) is left as it is, and so the layer stays float with its reason.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from mixq.quant.modules.registry import kind_of

# functional op -> (layer class, positional parameter names after input, weight, bias)
_OPS: dict[object, tuple[type[nn.Module], tuple[str, ...]]] = {
    F.conv1d: (nn.Conv1d, ("stride", "padding", "dilation", "groups")),
    F.conv2d: (nn.Conv2d, ("stride", "padding", "dilation", "groups")),
    torch.conv1d: (nn.Conv1d, ("stride", "padding", "dilation", "groups")),
    torch.conv2d: (nn.Conv2d, ("stride", "padding", "dilation", "groups")),
    F.linear: (nn.Linear, ()),
}


def _overriding_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear instances whose class overrides the compute of its registered base (``kind_of`` is None)."""
    bases = tuple({cls for cls, _ in _OPS.values()})
    return {n: m for n, m in model.named_modules() if n and isinstance(m, bases) and kind_of(m) is None}


def _param_owner(gm: fx.GraphModule, node: object, attr: str, candidates: dict[str, nn.Module]) -> str | None:
    """The candidate layer name when ``node`` reads ``<layer>.<attr>`` (a get_attr of that layer's parameter)."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    owner, _, name = str(node.target).rpartition(".")
    return owner if name == attr and owner in candidates else None


def _arguments(node: fx.Node, names: tuple[str, ...]) -> dict[str, object] | None:
    """``{input, weight, bias, *names}`` of a functional call, or None when it is spelled unexpectedly."""
    keys = ("input", "weight", "bias", *names)
    if len(node.args) > len(keys) or any(k not in keys for k in node.kwargs):
        return None
    found = dict(zip(keys, node.args, strict=False))
    found.update(node.kwargs)
    found.setdefault("bias", None)
    return found


def _plain_layer(cls: type[nn.Module], owner: nn.Module, args: dict[str, object]) -> nn.Module | None:
    """A plain ``cls`` computing ``args``'s functional call with ``owner``'s parameters (None if it cannot)."""
    weight = owner.weight
    consts = {k: args[k] for k in ("stride", "padding", "dilation", "groups") if k in args}
    if any(isinstance(v, fx.Node) for v in consts.values()):
        return None
    with torch.device("meta"):
        if cls is nn.Linear:
            layer = nn.Linear(weight.shape[1], weight.shape[0], bias=args["bias"] is not None)
        else:
            groups = int(consts.get("groups", 1))  # type: ignore[arg-type]
            layer = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                        bias=args["bias"] is not None, **consts)
    layer.weight = weight
    if args["bias"] is not None:
        layer.bias = owner.bias
    return layer


def lift_functional_layers(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``(model, lifted layer names)``: a ``torch.fx.GraphModule`` in which each functional conv/linear call on an
    overriding layer's own parameters calls a plain layer of its base type instead (see the module docstring), or
    ``model`` itself when it has no such layer or ``torch.fx`` cannot trace it."""
    candidates = _overriding_layers(model)
    if not candidates:
        return model, []
    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001  (untraceable: the layers stay float with their reason)
        return model, []
    gm = fx.GraphModule(model, graph, type(model).__name__)
    uses: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op in ("get_attr", "call_module"):
            owner = next((c for c in candidates if str(node.target).startswith(c + ".") or node.target == c), None)
            if owner is not None:
                uses.setdefault(owner, []).append(node)
    lifted = []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _OPS:
            continue
        cls, names = _OPS[node.target]
        args = _arguments(node, names)
        owner = _param_owner(gm, args and args["weight"], "weight", candidates)
        if args is None or owner is None or owner in lifted or not isinstance(candidates[owner], cls):
            continue
        bias = args["bias"]
        if bias is not None and _param_owner(gm, bias, "bias", candidates) != owner:
            continue
        layer = _plain_layer(cls, candidates[owner], args)
        params = [n for n in uses[owner] if n.op == "get_attr"]
        called = any(n.op == "call_module" and n.target == owner for n in uses[owner])
        if layer is None or called or len(params) != (1 if bias is None else 2) or any(len(p.users) != 1
                                                                                       for p in params):
            continue  # parameters read elsewhere too (tied, or transformed): not a plain layer call
        _move_children(gm, owner, uses[owner])
        _set(gm, owner, layer)
        with graph.inserting_before(node):
            call = graph.call_module(owner, (args["input"],))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for p in params:
            graph.erase_node(p)
        lifted.append(owner)
    if not lifted:
        return model, []
    graph.lint()
    gm.recompile()
    return gm, lifted


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _move_children(gm: fx.GraphModule, owner: str, nodes: list[fx.Node]) -> None:
    """Re-register the submodules the graph calls inside ``owner`` (its padding) as siblings ``<owner>_<child>``."""
    for node in nodes:
        if node.op == "call_module":
            inner = str(node.target)[len(owner) + 1:]
            moved = f"{owner}_{inner.replace('.', '_')}"
            _set(gm, moved, gm.get_submodule(str(node.target)))
            node.target = moved
