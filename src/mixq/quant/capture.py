"""Quantize what a layer computes, whatever its class is called: per-submodule capture (``torch.fx``, else
``torch.export``).

A module that holds weights but is no registered layer kind (a ``Linear`` subclass whose ``forward`` permutes its
input, a weight-standardised ``Conv2d`` subclass, a module calling ``F.conv2d`` / ``F.linear`` / ``x @ W`` on its
own parameters, a LoRA-style wrapper) is captured alone on the inputs it received in the probe forward pass: traced
with ``torch.fx`` (milliseconds) where the trace reads its weights only as layer calls' weights and computes the
module's exact output on that call, else with ``torch.export`` (a tenth of a second or more). In the captured graph
each ATen ``linear`` / ``conv1d`` / ``conv2d`` / ``embedding`` / ``matmul`` whose weight is a parameter, or is
computed from parameters only (weight standardisation, folded once here), becomes a plain ``nn.Linear`` /
``nn.Conv*d`` / ``nn.Embedding`` called as one module (``<module>.mixq_<op>_<k>``); registered layers inside the
module are put back as they are. The captured module (a ``torch.fx.GraphModule`` computing exactly what the module's
``forward`` computes) replaces the module in the user's model, which keeps its class: every mode, QAT and the graph
passes then see plain layers.

Identical instances (same classes, non-tensor attributes, parameter and buffer shapes, input shapes: see
``mixq.quant.capture_reuse``) are exported once; the others get a copy of that graph reading their own weights.

QAT (``trainable=True``) only captures weights that are parameters themselves: a computed weight would be trained
in place of the parameters it is computed from.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim
from torch.nn import functional as F
from torch.utils._pytree import tree_flatten, tree_map

from mixq.messages import first_line
from mixq.quant.calibration import Batch, call_checked
from mixq.quant.capture_reuse import reads_own_tensors, rebound, signature
from mixq.quant.fusion import set_submodule
from mixq.quant.modules.registry import adapter_of, is_quantizable, kind_name
from mixq.quant.planning import excluded
from mixq.quiet import quiet_capture

__all__ = ["call_module_instead", "capture_compute", "capture_root", "first_call_inputs", "plain_graph_module",
           "root_weights"]

aten = torch.ops.aten
Builder = Callable[[fx.Node, torch.Tensor, torch.Tensor | None], nn.Module | None]


def _conv(dims: int) -> Builder:
    cls = {1: nn.Conv1d, 2: nn.Conv2d}[dims]

    def build(node: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
        if weight.dim() != dims + 2:
            return None
        stride, padding, dilation, groups = (list(node.args[3:7]) + [1, 0, 1, 1][len(node.args[3:7]):])
        conv = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                   padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
        return _with_params(conv, weight, bias)

    return build


def _linear(node: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    if weight.dim() != 2:
        return None
    return _with_params(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight, bias)


def _matmul(node: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    """``x @ W`` with a constant 2-D ``W``: a Linear whose weight is ``W.T``."""
    if weight.dim() != 2:
        return None
    return _with_params(nn.Linear(weight.shape[0], weight.shape[1], bias=False), weight.t(), None)


def _embedding(node: fx.Node, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module | None:
    extra = list(node.args[2:])
    if weight.dim() != 2 or any(extra[1:]):  # scale_grad_by_freq / sparse
        return None
    padding_idx = extra[0] if extra and extra[0] is not None and extra[0] >= 0 else None
    embedding = nn.Embedding(weight.shape[0], weight.shape[1], padding_idx=padding_idx)
    return _with_params(embedding, weight, None)


def _with_params(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``layer`` holding ``weight`` and ``bias`` (the model's own parameters where they are parameters)."""
    layer.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = bias if isinstance(bias, nn.Parameter) else nn.Parameter(bias.detach(), requires_grad=False)
    return layer


# op -> (name, index of the input, index of the weight, index of the bias or None, builder)
_OPS: dict[Any, tuple[str, int, int, int | None, Builder]] = {
    aten.linear.default: ("linear", 0, 1, 2, _linear),
    aten.conv1d.default: ("conv1d", 0, 1, 2, _conv(1)),
    aten.conv2d.default: ("conv2d", 0, 1, 2, _conv(2)),
    aten.conv1d.padding: ("conv1d", 0, 1, 2, _conv(1)),
    aten.conv2d.padding: ("conv2d", 0, 1, 2, _conv(2)),
    aten.embedding.default: ("embedding", 1, 0, None, _embedding),
    aten.matmul.default: ("matmul", 0, 1, None, _matmul),
    aten.mm.default: ("matmul", 0, 1, None, _matmul),
}


def _constant(gm: fx.GraphModule, node: Any, memo: dict[fx.Node, Any]) -> Any:
    """The value of ``node`` when it depends on parameters and constants only (else None); parameters are
    returned as themselves, computed weights are evaluated once (no gradient)."""
    if not isinstance(node, fx.Node):
        return node
    if node in memo:
        return memo[node]
    value = None
    if node.op == "get_attr":
        value = _attr(gm, str(node.target))
    elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        inputs = [*node.args, *node.kwargs.values()]
        nested = any(isinstance(a, (list, tuple)) and any(isinstance(x, fx.Node) for x in a) for a in inputs)
        args = [_constant(gm, a, memo) for a in node.args]
        kwargs = {k: _constant(gm, v, memo) for k, v in node.kwargs.items()}
        if not nested and all(v is not None or not isinstance(a, fx.Node)
                              for a, v in zip(inputs, [*args, *kwargs.values()], strict=True)):
            with torch.no_grad():
                value = node.target(*args, **kwargs)
    memo[node] = value
    return value


def _attr(gm: nn.Module, path: str) -> Any:
    owner, _, name = path.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name)


def _registered_child(node: fx.Node, module: nn.Module) -> str | None:
    """The registered layer inside ``module`` that this call belongs to (innermost on the recorded module stack)."""
    for path, _ in reversed(list(node.meta.get("nn_module_stack", {}).values())):
        if not path:
            continue
        try:
            child = module.get_submodule(path)
        except AttributeError:
            continue
        if is_quantizable(child):
            return path
    return None


def _new_name(op: str, made: list[str]) -> str:
    return f"mixq_{op}_{sum(n.startswith(f'mixq_{op}_') for n in made)}"


def _transposed_param(gm: fx.GraphModule, node: Any) -> nn.Parameter | None:
    """``W`` when ``node`` is ``W.t()`` (or a transpose of its two axes) of a 2-D parameter ``W``."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    swap = node.target in (aten.t.default, aten.numpy_T.default) or (
        node.target == aten.transpose.int and sorted(a % 2 for a in node.args[1:3]) == [0, 1]) or (
        node.target == aten.permute.default and list(node.args[1]) == [1, 0])
    source = node.args[0] if swap else None
    if not (isinstance(source, fx.Node) and source.op == "get_attr"):
        return None
    value = _attr(gm, str(source.target))
    return value if isinstance(value, nn.Parameter) and value.dim() == 2 else None


def _batchnorm_child(node: fx.Node, module: nn.Module) -> str | None:
    """The BatchNorm submodule of ``module`` this eval-mode ``batch_norm`` call is, so it stays a module that
    Conv+BN folding sees (else it would run as an unfolded float op after the quantized conv)."""
    if node.op != "call_function" or node.target != aten.batch_norm.default or node.args[5] is not False:
        return None
    stack = list(node.meta.get("nn_module_stack", {}).values())
    path = stack[-1][0] if stack else ""
    try:
        child = module.get_submodule(path) if path else None
    except AttributeError:
        return None
    return path if isinstance(child, nn.modules.batchnorm._BatchNorm) else None


def call_module_instead(gm: fx.GraphModule, node: fx.Node, path: str, layer: nn.Module, x: Any) -> None:
    """Replace ``node`` by a call of ``layer`` (set at ``path`` in ``gm``) on ``x``."""
    set_submodule(gm, path, layer)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(path, (x,))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)


def _rewrite(gm: fx.GraphModule, module: nn.Module, trainable: bool) -> tuple[list[str], str]:
    """Turn compute calls on parameters into ``call_module`` nodes; returns (new layer names, why not or "")."""
    memo: dict[fx.Node, Any] = {}
    made: list[str] = []
    for node in list(gm.graph.nodes):
        batchnorm = _batchnorm_child(node, module)
        if batchnorm is not None:
            call_module_instead(gm, node, batchnorm, module.get_submodule(batchnorm), node.args[0])
            made.append(batchnorm)
            continue
        spec = _OPS.get(node.target) if node.op == "call_function" else None
        if spec is None or len(node.args) <= max(spec[1], spec[2]):
            continue
        op, x_index, w_index, b_index, build = spec
        child = _registered_child(node, module)
        transposed = _transposed_param(gm, node.args[w_index]) if op == "matmul" else None
        if child is not None:
            layer, path = module.get_submodule(child), child
        elif transposed is not None and _constant(gm, node.args[x_index], memo) is None:  # x @ W.T: W trains
            layer = _with_params(nn.Linear(transposed.shape[1], transposed.shape[0], bias=False), transposed, None)
            path = _new_name(op, made)
            layer.mixq_kind = f"{kind_name(module)} ({op})"
        else:
            weight = _constant(gm, node.args[w_index], memo)
            bias_arg = node.args[b_index] if b_index is not None and len(node.args) > b_index else None
            bias = _constant(gm, bias_arg, memo)
            if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or (
                    bias_arg is not None and bias is None) or _constant(gm, node.args[x_index], memo) is not None:
                continue
            if trainable and not (isinstance(weight, nn.Parameter) and (bias is None
                                                                        or isinstance(bias, nn.Parameter))):
                return [], (f"its {op} weight is computed from parameters; QAT would train the computed weight "
                            "instead of them")
            layer = build(node, weight, bias)
            if layer is None:
                continue
            path = _new_name(op, made)
            layer.mixq_kind = f"{kind_name(module)} ({op})"
        call_module_instead(gm, node, path, layer, node.args[x_index])
        made.append(path)
    if all(not n.startswith("mixq_") for n in made):
        return [], ""  # only registered layers inside: the module is left as it is
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return made, ""


# what a module's forward calls on its weights, as torch.fx records it -> the ATen overload torch.export records
# (the same arguments in the same order; F.conv1d/F.conv2d are torch.conv1d/torch.conv2d)
_FX_CALLS: dict[Any, tuple[Any, Any]] = {torch.conv1d: (aten.conv1d.default, aten.conv1d.padding),
                                         torch.conv2d: (aten.conv2d.default, aten.conv2d.padding),
                                         F.linear: (aten.linear.default, aten.linear.default),
                                         torch.matmul: (aten.matmul.default, aten.matmul.default)}


class _LayerLeafTracer(fx.Tracer):
    """torch.fx's tracer keeping registered layers (and adapted ones) as module calls, as torch.nn's own are."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or is_quantizable(m) or adapter_of(m) is not None


def _as_aten(node: fx.Node) -> bool:
    """Retarget a torch-level layer call to its ATen overload with every argument positional; False if not one."""
    overloads = _FX_CALLS.get(node.target) if node.op == "call_function" else None
    if overloads is None:
        return False
    schema = overloads[0]._schema.arguments
    values = [*node.args, *[node.kwargs.get(a.name, a.default_value if a.has_default_value() else None)
                            for a in schema[len(node.args):]]]
    if len(values) != len(schema) or set(node.kwargs) - {a.name for a in schema}:
        return False
    padding = values[4] if len(values) > 4 and overloads[0] in (aten.conv1d.default, aten.conv2d.default) else 0
    target = overloads[isinstance(padding, str)]
    sizes = [a.N if isinstance(a.type, torch.ListType) else None for a in target._schema.arguments]
    values = [[v] * n if n and isinstance(v, int) else list(v) if n and isinstance(v, tuple) else v
              for v, n in zip(values, sizes, strict=True)]  # stride=2 -> [2, 2], as F.conv2d broadcasts it
    node.target, node.args, node.kwargs = target, tuple(values), {}
    return True


def _weights_only_in_layer_calls(gm: fx.GraphModule) -> bool:
    """Whether every weight-shaped tensor the graph reads (2-D or more) feeds only layer calls, as their weight:
    then the layer calls are all the compute on weights there is, and nothing is left float unseen."""
    for node in gm.graph.nodes:
        value = _attr(gm, str(node.target)) if node.op == "get_attr" else None
        if not (isinstance(value, torch.Tensor) and value.dim() >= 2):
            continue
        for user in node.users:
            spec = _OPS.get(user.target) if user.op == "call_function" else None
            if spec is None or len(user.args) <= spec[2] or user.args[spec[2]] is not node or node in (
                    user.args[spec[1]], *user.args[spec[2] + 1:]):
                return False
    return True


def _same_outputs(a: Any, b: Any) -> bool:
    flat_a, flat_b = tree_flatten(a)[0], tree_flatten(b)[0]
    return len(flat_a) == len(flat_b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(flat_a, flat_b, strict=True))


def _copied(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _traced(module: nn.Module, args: tuple, kwargs: dict, expected: Any = None) -> fx.GraphModule | None:
    """``module`` traced with ``torch.fx`` (milliseconds; ``torch.export`` takes a tenth of a second or more), its
    ``F.conv1d`` / ``F.conv2d`` / ``F.linear`` / ``matmul`` calls as the ATen ops ``torch.export`` records, its
    non-tensor inputs fixed to this call's. None where the trace fails, where the graph reads a weight-shaped tensor
    in any other way (a computed weight, ``W.t()``), or where it does not compute exactly the module's output for
    this call (``expected``, when the probe pass recorded it; else the module is run once): ``torch.export`` then
    captures the module."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    if any(v is not None and not isinstance(v, torch.Tensor) and tree_flatten(v)[0] != [v]
           for v in bound.arguments.values()):
        return None  # tensors inside containers, *args, **kwargs: torch.export binds those
    concrete = {n: v for n, v in bound.arguments.items() if not isinstance(v, torch.Tensor)}
    try:
        graph = _LayerLeafTracer().trace(module, concrete_args=concrete)
    except Exception:  # noqa: BLE001  (anything torch.fx cannot trace goes to torch.export)
        return None
    gm = fx.GraphModule(module, graph, f"Captured{type(module).__name__}")
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in _FX_CALLS and not _as_aten(node):
            return None
    gm.recompile()
    if not _weights_only_in_layer_calls(gm):
        return None
    try:
        with torch.no_grad():
            reference = module(*args, **kwargs) if expected is None else expected
            same = _same_outputs(reference, gm(*args, **kwargs))
    except Exception:  # noqa: BLE001
        return None
    return gm if same else None


def _capture(module: nn.Module, args: tuple, kwargs: dict) -> tuple[fx.GraphModule | None, str]:
    """``module`` captured with ``torch.export`` on one call's inputs (every axis ``Dim.AUTO``; a batch axis of
    size 1 is repeated so it stays symbolic)."""
    def spec(t: Any) -> Any:
        return {i: Dim.AUTO for i in range(t.dim())} if isinstance(t, torch.Tensor) and t.dim() else None

    def grow(t: Any) -> Any:
        return torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() > 1 and t.shape[0] == 1 else t

    args, kwargs = tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}
    try:
        with quiet_capture(), torch.no_grad():
            program = torch.export.export(module, args, kwargs, strict=False,
                                          dynamic_shapes=_shapes_by_name(module, args, kwargs, spec))
            return plain_graph_module(program.module(), f"Captured{type(module).__name__}"), ""
    except Exception as err:  # noqa: BLE001  (any failure: the module stays float, with this reason)
        return None, f"{type(err).__name__}: {first_line(err, limit=160)}"


def _shapes_by_name(module: nn.Module, args: tuple, kwargs: dict, spec: Callable[[Any], Any]) -> tuple | dict:
    """``torch.export``'s ``dynamic_shapes`` for one call: a dict by parameter name (``*args`` as a tuple,
    ``**kwargs`` as a dict), each input's tensors (in tuples, lists, dicts) given ``spec``."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs)
    return {name: tree_map(spec, value) for name, value in bound.arguments.items()}


def _captured(module: nn.Module, args: tuple, kwargs: dict, trainable: bool,
              templates: dict[Hashable, fx.GraphModule] | None = None, expected: Any = None
              ) -> tuple[fx.GraphModule | None, list[str], str, str]:
    """``(graph module, layers made, "", tool)`` for ``module`` captured on one call's inputs with its compute on
    weights as plain layers, by ``tool`` (``torch.fx`` where :func:`_traced` can, else ``torch.export``);
    ``(None, [], "", tool)`` when it computes nothing mixq quantizes, ``(None, [], why, tool)`` on failure.
    ``templates``: ``torch.export`` captures by ``capture_reuse.signature``, reused for (and extended by) identical
    instances. ``expected``: the module's output on these inputs, where the probe pass recorded it."""
    traced = _traced(module, args, kwargs, expected)
    if traced is not None:
        made, why = _rewrite(traced, module, trainable)
        return (traced if made and not why else None), made, why, "torch.fx"
    key = signature(module, args, kwargs) if templates is not None else None
    gm = templates.get(key) if templates is not None and key is not None else None
    if gm is None:
        gm, why = _capture(module, args, kwargs)
        if gm is None:
            return None, [], f"torch.export could not capture it ({why})", "torch.export"
        if templates is not None and key is not None and reads_own_tensors(gm, module):
            templates[key] = gm
    if templates is not None and key in templates:  # the template stays unrewritten: this instance gets a copy
        gm = rebound(templates[key], module, f"Captured{type(module).__name__}")
    made, why = _rewrite(gm, module, trainable)
    return (gm if made and not why else None), made, why, "torch.export"


def plain_graph_module(gm: fx.GraphModule, name: str) -> fx.GraphModule:
    """A plain ``GraphModule`` running ``gm``'s graph (the exported program's module refuses ``train()``, which QAT
    and users call on the whole model); the input/output specs its pytree code reads come along."""
    plain = fx.GraphModule(gm, gm.graph, name)
    for attr in ("_in_spec", "_out_spec"):
        if hasattr(gm, attr):
            setattr(plain, attr, getattr(gm, attr))
    return plain


def _computes_outside_layers(m: nn.Module) -> bool:
    """Whether ``m`` (not torch.nn's own, no registered layer kind) owns a weight-shaped parameter itself."""
    if type(m).__module__.startswith("torch.") or is_quantizable(m) or adapter_of(m) is not None:
        return False
    return any(p.dim() >= 2 for p in m.parameters(recurse=False))


def _candidates(model: nn.Module, exclude: tuple[str, ...]) -> list[str]:
    """Modules (not the model itself, not torch.nn's own) that own a weight-shaped parameter but are no registered
    layer kind, outermost first."""
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(f"{f}.") for f in found) or excluded(name, exclude):
            continue
        if _computes_outside_layers(m):
            found.append(name)
    return found


def _trains_alike(child: nn.Module) -> bool:
    """Whether a child computes the same in training as in the eval-mode capture: a registered layer, or a module
    without parameters, buffers or dropout (padding, activations)."""
    if is_quantizable(child):
        return True
    stateless = not any(True for _ in child.parameters()) and not any(True for _ in child.buffers())
    return stateless and not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in child.modules())


def first_call_inputs(model: nn.Module, names: list[str], probe: Batch,
                      call: Callable[[nn.Module, Batch], Any] = call_checked,
                      outputs: dict[str, Any] | None = None) -> dict[str, tuple[tuple, dict]]:
    """The first call's ``(args, kwargs)`` of each named module during one forward pass of ``probe`` (run by
    ``call``: by default a batch the model cannot take is refused in one line). ``outputs``, when given, receives
    a copy of each first call's output (what a capture of the module must compute from those inputs)."""
    seen: dict[str, tuple[tuple, dict]] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, k, n=n: seen.setdefault(n, (a, k)) and None, with_kwargs=True) for n in names]
    if outputs is not None:
        def record(name: str, output: Any) -> None:  # returns None: the module's output is left as it is
            if name not in outputs:
                outputs[name] = tree_map(_copied, output)

        hooks += [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: record(n, o)) for n in names]
    try:
        with torch.no_grad():
            call(model, probe)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def capture_compute(model: nn.Module, probe: Batch | None, notes: list[str], exclude: tuple[str, ...] = (),
                    trainable: bool = False) -> dict[str, str]:
    """Replace, in place, each module that computes with its weights outside a registered layer by its captured
    graph with plain layers (see the module docstring). Appends what was captured to ``notes``; returns
    ``{module name: why it stays as it is}`` for the modules that could not be captured."""
    names = _candidates(model, exclude)
    if not names:
        return {}
    if probe is None:
        return {n: "pass example_inputs (or calib_data) so mixq can capture what its forward computes" for n in names}
    outputs: dict[str, Any] = {}
    inputs = first_call_inputs(model, names, probe, outputs=outputs)
    failed: dict[str, str] = {}
    templates: dict[Hashable, fx.GraphModule] = {}
    for name in names:
        module = model.get_submodule(name)
        if name not in inputs:
            failed[name] = "never called in the probe forward pass, so its graph could not be captured"
            continue
        if trainable and not all(_trains_alike(c) for c in module.children()):
            failed[name] = ("QAT captures only modules whose children are registered layers or stateless "
                            "(padding, activations)")
            continue
        gm, made, why, tool = _captured(module, *inputs[name], trainable, templates, outputs.get(name))
        if why:
            failed[name] = why
        if gm is None:
            continue  # failed, or no compute on its weights that mixq quantizes (a position table): left as it is
        set_submodule(model, name, gm)
        notes.append(f"{name} ({kind_name(module)}) captured with {tool}: {', '.join(made)} quantized as "
                     "what its forward computes")
    return failed


def root_weights(model: nn.Module) -> list[str]:
    """Names of the weight-shaped parameters the model itself owns (not its submodules), when the model is no
    registered layer: its own ``forward`` may compute with them (``F.conv2d(x, self.w)``)."""
    if not _computes_outside_layers(model):
        return []
    return [n for n, p in model.named_parameters(recurse=False) if p.dim() >= 2]


def capture_root(model: nn.Module, probe: Batch | None, notes: list[str]) -> nn.Module:
    """``model``, or its ``torch.export`` capture with the compute on its *own* parameters as plain layers (see
    :func:`capture_compute`, which covers submodules). A submodule is replaced in its parent; the model itself
    cannot be, so the caller puts the returned graph module back under the model's class (``mixq.quant.graft``).
    Where it cannot be captured, ``notes`` says which of its parameters any compute stays float with."""
    own = root_weights(model)
    if not own:
        return model
    names = ", ".join(own)
    if probe is None:
        notes.append(f"the model's own parameters ({names}) stay float wherever its forward computes with them: "
                     "pass example_inputs (or calib_data) so mixq can capture that compute")
        return model
    gm, made, why, tool = _captured(model, *first_call_inputs(model, [""], probe)[""], trainable=False)
    if why:
        notes.append(f"the model's own parameters ({names}) stay float wherever its forward computes with them: {why}")
    if gm is None:
        return model  # failed, or its own parameters feed no compute mixq quantizes (e.g. a position table)
    notes.append(f"the model's own forward ({kind_name(model)}) captured with {tool}: "
                 f"{', '.join(n for n in made if n.startswith('mixq_'))} quantized as what it computes")
    return gm
