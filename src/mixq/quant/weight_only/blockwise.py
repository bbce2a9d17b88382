"""Running a decoder one block at a time: find the stack of blocks, capture what the first block receives, run a
block on cached inputs, and discover which layers share an input (and which op produced it).

The inputs of block k+1 are the outputs of block k after it was quantized, so each block is calibrated on what it
will see at run time, and only one block's statistics are alive at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mixq.quant.calibration import Batch, call_checked

Call = tuple[tuple, dict]  # the positional and keyword arguments of one block call


def find_blocks(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Names of the repeated blocks (the largest ``nn.ModuleList`` of same-type modules holding target layers),
    in order; empty when the model has no such stack."""
    targets = list(targets)
    best: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        names = [f"{name}.{i}" if name else str(i) for i in range(len(module))]
        if not all(any(t.startswith(n + ".") for t in targets) for n in names):
            continue
        covered = sum(1 for t in targets if any(t.startswith(n + ".") for n in names))
        best_covered = sum(1 for t in targets if any(t.startswith(n + ".") for n in best))
        if covered > best_covered:
            best = names
    return best


class _Stop(Exception):
    """Raised by the capture hook: everything after the first block is skipped."""


def _no_cache(value: Any) -> Any:
    """Calibration runs each block many times: key/value caches would grow, so they are dropped."""
    return None if type(value).__name__.endswith("Cache") else value


def capture_inputs(model: nn.Module, block: nn.Module, batches: Iterable[Batch]) -> list[Call]:
    """The arguments ``block`` receives for each batch (the rest of the model is not run)."""
    calls: list[Call] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = {k: _no_cache(v) for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        calls.append((tuple(_no_cache(a) for a in args), kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            try:
                call_checked(model, batch, i)
            except _Stop:
                pass
            except Exception as err:  # call_checked wraps errors; the _Stop may be its cause
                if not isinstance(err.__cause__, _Stop):
                    raise
    finally:
        handle.remove()
    return calls


def hidden_of(output: Any) -> torch.Tensor:
    """A block's hidden-state output (HF blocks return it alone or first in a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def with_hidden(call: Call, hidden: torch.Tensor) -> Call:
    """The same call with its hidden-state input replaced (first positional, or ``hidden_states=``)."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def run_block(block: nn.Module, calls: list[Call]) -> list[Call]:
    """Run ``block`` on every cached call; returns the calls for the next block."""
    return [with_hidden(call, hidden_of(block(*call[0], **call[1]))) for call in calls]


@dataclass
class Group:
    """Layers that read the same input tensor, in first-call order, and the module that produced it (if any)."""

    names: list[str]
    producer: str | None


def discover_groups(model: nn.Module, targets: list[str], run: Callable[[], Any],
                    candidates: Callable[[nn.Module], bool]) -> list[Group]:
    """Group ``targets`` (module names inside ``model``) by shared input during one ``run()``; a group's producer
    is the ``candidates`` module whose output object is that input."""
    inputs: list[tuple[str, torch.Tensor]] = []
    outputs: list[tuple[str, torch.Tensor]] = []
    handles = []
    wanted = set(targets)
    for name, module in model.named_modules():
        if name in wanted:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=name: inputs.append((n, a[0])) if not any(n == k for k, _ in inputs) else None))
        if name and candidates(module):
            handles.append(module.register_forward_hook(
                lambda m, a, out, n=name: outputs.append((n, out)) if isinstance(out, torch.Tensor) else None))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    groups: list[tuple[torch.Tensor, Group]] = []
    for name, x in inputs:
        for tensor, group in groups:
            if tensor is x:
                group.names.append(name)
                break
        else:
            producer = next((n for n, out in outputs if out is x and n != name), None)
            groups.append((x, Group([name], producer)))
    found = {n for _, g in groups for n in g.names}
    return [g for _, g in groups] + [Group([n], None) for n in targets if n not in found]
