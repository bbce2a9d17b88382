"""A graph captured in training mode that follows ``train()`` / ``eval()`` as the model it came from does (QAT).

``torch.export`` records one mode: captured in training mode, a dropout is an ``aten.dropout(x, p, True)`` call
that would keep dropping in eval mode, and a BatchNorm outside the quantized layers keeps using batch statistics.
:func:`follow_mode` puts each of them back as a module (``nn.Dropout(p)``, the model's own BatchNorm, and the
model's own module for a stateless one that draws random numbers, such as drop-path), so the graph's mode switches
them as the model's would, and refuses a graph holding any other operator that depends on the mode or on a random
generator. Any other ``if self.training`` branch in the model's code was fixed to its
training side at capture, so the result is checked against the model itself: in eval mode, and in training mode
with the same random seed (the same dropout masks); a graph that differs in either is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from mixq.quant.calibration import Batch, call_model
from mixq.quant.capture import call_module_instead, plain_graph_module
from mixq.quant.fusion import set_submodule

__all__ = ["follow_mode", "mismatch"]

aten = torch.ops.aten
_DROPOUTS = {aten.dropout.default, aten.dropout_.default}
# operators whose result depends on the mode or on a random generator, beyond what follow_mode rewrites
_MODE_DEPENDENT = ("bernoulli", "rand", "normal", "dropout", "native_batch_norm", "_batch_norm", "batch_norm",
                   "instance_norm", "rrelu", "multinomial")


def _owner(node: fx.Node) -> str:
    stack = list(node.meta.get("nn_module_stack", {}).values())
    return stack[-1][0] if stack else ""


def _dropouts_as_modules(gm: fx.GraphModule) -> int:
    """Each training-mode dropout call becomes an ``nn.Dropout(p)`` (``mixq_dropout_<k>``); returns how many."""
    made = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _DROPOUTS:
            continue
        x, p, train = (list(node.args) + [True])[:3]
        if not train or not p:
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
            continue
        call_module_instead(gm, node, f"mixq_dropout_{made}", nn.Dropout(float(p)), x)
        made += 1
    return made


def _batchnorms_as_modules(gm: fx.GraphModule, model: nn.Module) -> str:
    """Each training-mode ``batch_norm`` call becomes a call of the model's BatchNorm it came from; returns why
    not, or ""."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.batch_norm.default:
            continue
        path = _owner(node)
        try:
            bn = model.get_submodule(path) if path else None
        except AttributeError:
            bn = None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            return f"a batch_norm call outside any BatchNorm module ({path or 'the model itself'})"
        call_module_instead(gm, node, path, bn, node.args[0])
    return ""


def _stack_paths(node: fx.Node) -> list[str]:
    return [path for path, _ in node.meta.get("nn_module_stack", {}).values()]


def _stateless(model: nn.Module, path: str) -> nn.Module | None:
    """The model's module at ``path`` when it holds no parameters, buffers or layers mixq quantizes (a drop-path
    module), else None."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    if next(module.parameters(), None) is not None or next(module.buffers(), None) is not None:
        return None
    return module


def _random_module_as_call(gm: fx.GraphModule, model: nn.Module, node: fx.Node) -> bool:
    """Replace the nodes of the stateless module ``node`` (a random or mode-dependent operator) belongs to (a
    drop-path module drawing ``torch.rand`` in training) by one call of that module, when they read one tensor
    from outside and give one back; returns whether it did."""
    for path in reversed(_stack_paths(node)):
        module = _stateless(model, path) if path else None
        if module is None:
            continue
        inside = [n for n in gm.graph.nodes if path in _stack_paths(n)]
        members = set(inside)
        inputs = {a for n in inside for a in n.all_input_nodes if a not in members and a.op != "get_attr"
                  and isinstance(a.meta.get("val"), torch.Tensor)}  # sizes of it read outside come from it
        outputs = [n for n in inside if any(u not in members for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            return False
        set_submodule(gm, path, module)
        with gm.graph.inserting_after(outputs[0]):
            call = gm.graph.call_module(path, (next(iter(inputs)),))
        call.meta = dict(outputs[0].meta)
        outputs[0].replace_all_uses_with(call)
        for n in reversed(inside):
            gm.graph.erase_node(n)
        return True
    return False


def _mode_dependent_node(gm: fx.GraphModule) -> fx.Node | None:
    return next((n for n in gm.graph.nodes if n.op == "call_function"
                 and any(word in str(n.target) for word in _MODE_DEPENDENT)), None)


def _mode_dependent(gm: fx.GraphModule) -> str:
    """The first operator left whose result depends on the mode or on randomness (or "")."""
    node = _mode_dependent_node(gm)
    return "" if node is None else f"{node.target} ({_owner(node) or 'the model itself'})"


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Run ``model`` and put its buffers (BatchNorm statistics) and mode back afterwards."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    mode = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        model.train(mode)


def _outputs(module: nn.Module, call: Callable[[nn.Module], Any], training: bool, seed: int = 0
             ) -> list[torch.Tensor]:
    module.train(training)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        out: Any = call(module)
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def mismatch(expected: list[torch.Tensor], got: list[torch.Tensor]) -> str:
    """How a graph's output tensors ``got`` differ from the model's ``expected`` ("" where they agree to float
    rounding)."""
    if len(expected) != len(got):
        return f"returns {len(got)} tensors where the model returns {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if e.shape != g.shape or not torch.allclose(e, g, rtol=1e-4, atol=1e-5, equal_nan=True):
            return f"output {i} differs from the model's"
    return ""


def _differs(gm: fx.GraphModule, model: nn.Module, probe: Batch, reference: tuple[tuple, dict] | None) -> str:
    """Where the graph computes something else than the model on ``probe`` ("" if nowhere): in eval mode, and in
    training mode with the same random seed. ``reference``: the model's own call, when it was called with more
    than ``probe`` holds (flags such as ``return_dict`` that the capture left at their defaults)."""
    def call_reference(m: nn.Module) -> Any:
        return call_model(m, probe) if reference is None else m(*reference[0], **reference[1])

    for training in (False, True):
        with _restored(model), _restored(gm):
            expected = _outputs(model, call_reference, training)
            got = _outputs(gm, lambda m: call_model(m, probe), training)
        why = mismatch(expected, got)
        if why:
            return f"in {'training' if training else 'eval'} mode {why} (a branch on self.training?)"
    return ""


def follow_mode(gm: fx.GraphModule, model: nn.Module, probe: Batch,
                reference: tuple[tuple, dict] | None = None) -> tuple[fx.GraphModule | None, str]:
    """``(graph module, "")``: ``gm`` (captured from ``model`` in training mode) with its dropouts and BatchNorms as
    modules, so ``train()`` / ``eval()`` switch them, checked against ``model`` in both modes on ``probe`` (against
    ``model(*reference[0], **reference[1])`` where given); or ``(None, why not)``."""
    gm = plain_graph_module(gm, f"Captured{type(model).__name__}")
    dropouts = _dropouts_as_modules(gm)
    why = _batchnorms_as_modules(gm, model)
    if why:
        return None, why
    modules = 0
    while (node := _mode_dependent_node(gm)) is not None and _random_module_as_call(gm, model, node):
        modules += 1
    left = _mode_dependent(gm)
    if left:
        return None, f"the training-mode graph holds {left}, which mixq cannot switch with train()/eval()"
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    why = _differs(gm, model, probe, reference)
    if why:
        return None, f"the training-mode graph {why}"
    gm.mixq_dropouts = dropouts + modules
    return gm, ""
