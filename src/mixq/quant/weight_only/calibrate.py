"""``calibrate_weights``: the stage that runs GPTQ or AWQ over a prepared model, one decoder block at a time.

Block k is calibrated on the outputs of the already quantized blocks before it; the layers outside the block stack
(e.g. ``lm_head``) are calibrated last from one pass of the whole, partly quantized, model. With
``WeightMethod(blockwise=False)`` (or a model without a block stack) every layer's statistics are gathered in one
float forward pass instead, which holds them all in memory at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from mixq.quant.calibration import Batch, call_checked
from mixq.quant.modules.weight_only import grid_of
from mixq.quant.stages import Prepared
from mixq.quant.weight_only.awq import can_fold_into
from mixq.quant.weight_only.blockwise import Group, capture_inputs, discover_groups, find_blocks, run_block
from mixq.quant.weight_only.layers import in_out_features, is_linear_like
from mixq.quant.weight_only.methods import MethodWorker, method_class

# Where the input of a layer is a per-channel linear function of another layer's output (SwiGLU: act(gate) * up;
# attention: probabilities @ v when every head has its own values), beyond the modules that produce it directly.
_LINKED_PRODUCERS = {"down_proj": "up_proj", "o_proj": "v_proj"}


def _producer_candidate(module: nn.Module) -> bool:
    return is_linear_like(module) or (not list(module.children()) and isinstance(getattr(module, "weight", None),
                                                                                torch.Tensor))


def _link_producers(model: nn.Module, groups: list[Group]) -> None:
    for group in groups:
        parent, _, leaf = group.names[0].rpartition(".")
        linked = _LINKED_PRODUCERS.get(leaf)
        if group.producer is None and len(group.names) == 1 and linked:
            name = f"{parent}.{linked}" if parent else linked
            with contextlib.suppress(AttributeError):
                producer = model.get_submodule(name)
                if can_fold_into(producer, in_out_features(model.get_submodule(group.names[0]))[0]):
                    group.producer = name


@contextlib.contextmanager
def _observing(model: nn.Module, names: list[str], worker: MethodWorker) -> Iterator[None]:
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: worker.observe(n, a[0]))
               for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _no_kv_cache(model: nn.Module) -> Iterator[None]:
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if old is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if old is not None:
            config.use_cache = old


def _untie(model: nn.Module, names: list[str]) -> None:
    """Give each target layer its own weight (GPT-2 ties lm_head to the embedding table, which must not move)."""
    counts: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            counts[id(p)] = counts.get(id(p), 0) + 1
    for name in names:
        layer = model.get_submodule(name)
        if counts.get(id(layer.weight), 0) > 1:
            layer.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)


def _calibrate(model: nn.Module, scope: nn.Module, prefix: str, names: list[str], worker: MethodWorker,
               probe: Callable[[], object], run: Callable[[], object], sequential: bool = True) -> None:
    """Discover the groups of ``names`` inside ``scope`` from one ``probe`` pass and let the worker quantize them
    from the statistics of full ``run`` passes (one pass per group when the worker and ``sequential`` allow, so
    each group sees the quantized outputs of the groups before it; else one pass for all)."""
    local = [n[len(prefix):] for n in names]
    groups = discover_groups(scope, local, probe, _producer_candidate)
    groups = [Group([prefix + n for n in g.names], None if g.producer is None else prefix + g.producer)
              for g in groups]
    _link_producers(model, groups)
    if worker.sequential and sequential:
        for group in groups:
            with _observing(model, group.names, worker):
                run()
            worker.quantize_groups([group])
    else:
        with _observing(model, names, worker):
            run()
        worker.quantize_groups(groups)


@torch.no_grad()
def calibrate_weights(prepared: Prepared, batches: list[Batch], *, progress: bool = True) -> None:
    """Choose the weights of every weight-only linear layer of ``prepared`` with its config's method (GPTQ or
    AWQ): weights are moved onto the grid in place and the group parameters stored in ``prepared.weight_params``."""
    config, model = prepared.config, prepared.model
    method = config.method
    names = [n for n in prepared.targets
             if config.choice(n).mode == "weight_only" and is_linear_like(model.get_submodule(n))]
    if not names:
        return
    _untie(model, names)
    grids = {n: grid_of(config.weight, in_out_features(model.get_submodule(n))[0]) for n in names}
    worker = method_class(method.name)(model, grids, method, prepared.weight_params, prepared.summary.notes)
    first = batches[:1]

    def run_model(data: list[Batch]) -> Callable[[], object]:
        return lambda: [call_checked(model, b, i) for i, b in enumerate(data)]

    blocks = find_blocks(model, names) if method.blockwise else []
    with _no_kv_cache(model):
        if not blocks:
            if method.blockwise:
                prepared.summary.notes.append(f"{method.name}: no stack of decoder blocks found; calibrated the "
                                              "whole model in one pass")
            _calibrate(model, model, "", names, worker, run_model(first), run_model(batches), sequential=False)
            return
        calls = capture_inputs(model, model.get_submodule(blocks[0]), batches)
        bar = tqdm(blocks, desc=f"{method.name} blocks", disable=not progress, leave=False)
        for block_name in bar:
            bar.set_postfix_str(block_name)
            block = model.get_submodule(block_name)
            inside = [n for n in names if n.startswith(block_name + ".")]
            if inside:
                _calibrate(model, block, block_name + ".", inside, worker,
                           lambda b=block, c=calls[:1]: run_block(b, c), lambda b=block, c=calls: run_block(b, c))
            calls = run_block(block, calls)
        rest = [n for n in names if not any(n.startswith(b + ".") for b in blocks)]
        if rest:
            _calibrate(model, model, "", rest, worker, run_model(first), run_model(batches), sequential=False)
    prepared.summary.notes.append(f"{method}: calibrated {len(blocks)} blocks one at a time on {len(batches)} "
                                  "batches")
