"""Graph mode through ``torch.export`` for models ``torch.fx`` cannot trace (Hugging Face encoders and decoders).

``torch.export`` captures the whole forward pass as ATen operators, whatever Python the model runs. mixq turns that
program back into a module (``ExportedProgram.module()``) and puts each layer it quantizes back in as one
``call_module`` node (``aten.linear`` -> the ``nn.Linear`` at that path, ``aten.embedding`` -> the embedding, ...),
so the graph passes of ``mixq.quant.graph`` (scale sharing, integer adds, integer attention MatMuls) and the
per-layer conversion work on it exactly as on a ``torch.fx`` trace. Input axes a user varies (batch, sequence) stay
symbolic, so the quantized module and its ONNX export serve every batch size and length.

Hugging Face attention that runs as one fused ``scaled_dot_product_attention`` is switched to the model's eager
implementation first (the same function), so its two MatMuls exist as operators that can be quantized. A decoder
that returns a key/value cache (``config.use_cache``, the default of causal LMs) keeps the layer-by-layer path, so
it can still generate and export as a key/value-cache decoder; with ``config.use_cache = False`` it gets graph
mode. Integer attention would not pay there: with the cache in float, every generated token quantizes the whole
cached K and V again for one query row (``benchmarks/bench_decode_attention.py``: 1.6-2.0x the float time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from mixq.messages import first_line
from mixq.quant.calibration import Batch, batch_args, call_model
from mixq.quant.dynamic_shapes import default_axes, grow_unit_axes, torch_export_spec
from mixq.quant.fusion import set_submodule
from mixq.quant.train_graph import follow_mode, mismatch
from mixq.quiet import quiet_capture

# what graph-mode capture gives mixq.quant.stages
__all__ = ["NO_NAN_GUARD", "export_friendly", "export_graph", "returns_cache"]

aten = torch.ops.aten
# ATen calls that are one layer: the argument holding the weight, and how many leading arguments are its inputs
_LAYER_CALLS = {aten.linear.default: (1, 1), aten.conv1d.default: (1, 1), aten.conv2d.default: (1, 1),
                aten.conv1d.padding: (1, 1), aten.conv2d.padding: (1, 1), aten.embedding.default: (0, 1)}


def _hf_models(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face models in ``model`` (itself, or inside a user's wrapper)."""
    found: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        inside = any(not outer or name.startswith(f"{outer}.") for outer, _ in found)
        if hasattr(m, "set_attn_implementation") and hasattr(m, "config") and not inside:
            found.append((name, m))
    return [m for _, m in found]


def returns_cache(model: nn.Module, probe: Batch, output: Any = None) -> bool:
    """Whether ``model`` returns a key/value cache for ``probe`` (a causal LM with ``config.use_cache``): one
    captured graph cannot carry it between calls, and generation (``generate``, ``export_decoder_onnx``) needs it.
    ``output``: the model's output for ``probe`` when the caller already has it (no second forward pass)."""
    if not _hf_models(model):
        return False
    if output is None:
        with torch.no_grad():
            output = call_model(model, probe)
    return getattr(output, "past_key_values", None) is not None


INTEGER_ATTENTION = "so its MatMuls can run as integer kernels"
NO_NAN_GUARD = ("so the exported attention needs no NaN guard (sdpa's ONNX form runs IsNaN and Where over every "
                "attention probability) and exports with a symbolic batch axis (torch.onnx cannot decompose T5's and "
                "Swin's sdpa form with one)")


def export_friendly(model: nn.Module, why: str = INTEGER_ATTENTION) -> tuple[list[str], Callable[[], None]]:
    """Switch Hugging Face models inside ``model`` to eager attention (the same function as ``sdpa``, with Q·Kᵀ and
    probabilities·V as separate MatMuls that can be quantized, and a finite additive mask, so no softmax row is
    NaN and the ONNX form needs no NaN guard). ``why`` ends the summary note. Returns notes for the summary and a
    function that undoes the switches."""
    notes: list[str] = []
    undo: list[Callable[[], None]] = []
    for hf in _hf_models(model):
        current = getattr(hf.config, "_attn_implementation", None)
        if current not in (None, "eager"):
            try:
                hf.set_attn_implementation("eager")
            except (ValueError, ImportError, AttributeError):
                pass
            else:
                undo.append(lambda hf=hf, current=current: hf.set_attn_implementation(current))
                notes.append(f"attention switched from {current!r} to the model's eager implementation (the same "
                             f"function) {why}")

    def restore() -> None:
        for step in reversed(undo):
            step()

    return list(dict.fromkeys(notes)), restore


def _layer_path(node: fx.Node, aliases: dict[str, str]) -> str | None:
    """The target layer an ATen layer call belongs to: the innermost module on its recorded module stack (tied
    weights read through another layer's attribute), else the owner of its weight attribute. ``aliases``: every
    name of each target (a layer registered at two paths, T5's ``shared`` and ``encoder.embed_tokens``) -> the
    target's name."""
    spec = _LAYER_CALLS.get(node.target)  # type: ignore[arg-type]
    if node.op != "call_function" or spec is None or len(node.args) <= spec[0]:
        return None
    stack = list(node.meta.get("nn_module_stack", {}).values())
    if stack and stack[-1][0] in aliases:
        return aliases[stack[-1][0]]
    weight = node.args[spec[0]]
    if isinstance(weight, fx.Node) and weight.op == "get_attr" and str(weight.target).endswith(".weight"):
        return aliases.get(str(weight.target)[: -len(".weight")])
    return None


def _twin_key(m: nn.Module) -> tuple | None:
    """What makes two layers compute the same: their class, hyper-parameters and weight tensor (tied weights)."""
    weight = getattr(m, "weight", None)
    return (type(m), m.extra_repr(), id(weight)) if isinstance(weight, nn.Parameter) else None


def _aliases(model: nn.Module, targets: list[str]) -> dict[str, str]:
    """Every path each target layer is registered at in ``model``, and every path of a twin layer computing the
    same with the same (tied) weight, as T5's ``encoder.embed_tokens`` does ``shared``'s -> the target's name."""
    wanted = {id(model.get_submodule(t)): t for t in targets}
    twins: dict[tuple, str] = {}
    for t in targets:
        key = _twin_key(model.get_submodule(t))
        if key is not None:
            twins.setdefault(key, t)
    aliases = {}
    for name, m in model.named_modules(remove_duplicate=False):
        target = wanted.get(id(m)) or twins.get(_twin_key(m))  # type: ignore[arg-type]
        if target is not None:
            aliases[name] = target
    return aliases


def _restore_layers(gm: fx.GraphModule, model: nn.Module, targets: list[str]) -> tuple[str, dict[str, str]]:
    """Replace each target layer's ATen call with a ``call_module`` of the original layer. Returns ``(why not or
    "", {target left float: why})``: a target the program never calls as one operator (its weight read directly,
    as DeBERTa-v2 reads its relative-position table, or not at all) stays float and computes as the model does."""
    aliases, found = _aliases(model, targets), set()
    for node in list(gm.graph.nodes):
        path = _layer_path(node, aliases)
        if path is None:
            continue
        weight_index, inputs = _LAYER_CALLS[node.target]  # type: ignore[index]
        args = node.args[1:1 + inputs] if weight_index == 0 else node.args[:inputs]
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(path, tuple(args))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
        found.add(path)
    twins_found = {_twin_key(model.get_submodule(t)) for t in found} - {None}
    missing = {t for t in targets if t not in found and _twin_key(model.get_submodule(t)) not in twins_found}
    gm.graph.eliminate_dead_code()
    read = {str(n.target): aliases[str(n.target).rpartition(".")[0]] for n in gm.graph.nodes
            if n.op == "get_attr" and n.users and str(n.target).rpartition(".")[0] in aliases}
    outside = [attr for attr, target in read.items() if target not in missing]
    if outside:
        return f"{outside[0]} is also read outside its layer", {}
    read_directly = set(read.values())
    left = {t: ("the captured graph reads its weight directly instead of calling it as one layer" if t in
                read_directly else "the captured graph never calls it") for t in targets if t in missing}
    for path in targets:
        if path not in left:
            set_submodule(gm, path, model.get_submodule(path))
    gm.recompile()
    return "", left


def _tensors(output: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def _differs_from(gm: fx.GraphModule, model: nn.Module, probe: Batch, reference: tuple[tuple, dict]) -> str:
    """Where the graph, given ``probe`` (the tensors of the model's own call ``reference``), computes something
    else than ``model(*reference[0], **reference[1])`` in eval mode, e.g. with a flag the call set ("" if nowhere)."""
    with torch.no_grad():
        why = mismatch(_tensors(model(*reference[0], **reference[1])), _tensors(call_model(gm, probe)))
    return f"the captured graph {why} called as its parent calls it" if why else ""


def export_graph(model: nn.Module, probe: Batch, targets: list[str], training: bool = False,
                 reference: tuple[tuple, dict] | None = None) -> tuple[fx.GraphModule | None, str, dict[str, str]]:
    """``(graph module, "", left float)`` with ``targets`` as ``call_module`` nodes but those in ``left float``
    (target -> why: the program does not call it as one layer, so it stays float), or ``(None, why not, {})``. The
    graph module computes what ``model`` computes, takes the same inputs (batch and sequence axes symbolic) and keeps
    the model's ``config`` attribute; ``model`` itself is only read.

    ``training=True`` (QAT) captures the training-mode forward and makes it follow ``train()`` / ``eval()`` as the
    model does (:func:`mixq.quant.train_graph.follow_mode`, checked against ``reference``: the model's own call
    where ``probe`` holds only its tensors), or refuses; in eval mode a graph given a ``reference`` is checked
    against it too."""
    args, kwargs = batch_args(probe)
    positional, keyword = default_axes(args, kwargs)
    args, kwargs = grow_unit_axes(args, kwargs, positional, keyword)
    was_training = model.training
    try:
        model.train(training)
        with quiet_capture(), torch.no_grad():
            program = torch.export.export(model, args, kwargs, dynamic_shapes=torch_export_spec(
                model, positional, keyword), strict=False)
            gm = program.module()
    except Exception as err:  # noqa: BLE001  (any export failure means: fall back to layer by layer)
        return None, f"{type(err).__name__}: {first_line(err, limit=200)}", {}
    finally:
        model.train(was_training)
    if training:
        gm, why = follow_mode(gm, model, probe, reference)
        if gm is None:
            return None, why, {}
    elif reference is not None:
        why = _differs_from(gm, model, probe, reference)
        if why:
            return None, why, {}
    why, left = _restore_layers(gm, model, targets)
    if why:
        return None, why, {}
    if hasattr(model, "config"):
        gm.config = model.config
        if not getattr(gm.config, "architectures", None):  # as transformers' save_pretrained records it
            gm.config.architectures = [type(model).__name__]  # (mixq.from_pretrained rebuilds the float model)
    return gm, "", left
