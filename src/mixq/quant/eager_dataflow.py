"""Dataflow between observed modules where no graph shows it, found in one forward pass of a copy: a model
quantized layer by layer, and a task model's head, which stays Python around its captured base model
(``mixq.quant.root_capture``).

A tensor that goes straight from one observed module into the next is one value: the consumer shares the
producer's output grid, so it is rounded once. Without that it is rounded twice, on the producer's grid and then on
the consumer's, and ONNX Runtime merges such a Q -> DQ -> Q -> DQ chain into one rounding on a third grid
(``DoubleQDQPairsRemover``): the file would not compute what the simulation does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import torch
from torch import nn

from mixq.quant.forward_hooks import run_hooked
from mixq.quant.graft import copy_model
from mixq.quant.modules.observed import ObservedAdd, ObservedLayer, ObservedMatMul

__all__ = ["head_dataflow", "share_inputs", "share_observers_eager"]

_OBSERVED = (ObservedLayer, ObservedAdd, ObservedMatMul)


def share_inputs(consumer: nn.Module, inputs: tuple | list, producer_of: Callable[[object], nn.Module | None]) -> int:
    """Point ``consumer``'s observed inputs at their producers' output observers; returns how many now share."""
    if getattr(consumer, "smooth", None) is not None:
        return 0  # a smoothed input (x / s) is not its producer's output
    shared = 0
    for index, value in enumerate(inputs[:1 if isinstance(consumer, ObservedLayer) else 2]):
        producer = producer_of(value)
        if producer is not None and producer is not consumer:
            consumer.share_input(index, producer.output_observer)
            shared += 1
    return shared


@dataclasses.dataclass
class _Flow:
    """What one forward pass showed: each observed module's output tensors and its first call's tensor inputs (by
    id; the pass kept them alive, so no id was reused)."""

    outputs: dict[str, list[int]]
    read: dict[str, list[int]]
    produced: dict[int, str]  # output tensor -> the first module that returned it


def _flow(model: nn.Module, run: Callable[[nn.Module], object]) -> _Flow:
    """The observed modules' dataflow in one forward pass (``run``) of a copy, so calibration leaves the model's
    observers alone."""
    twin = copy_model(model)
    names = {id(m): n for n, m in twin.named_modules() if isinstance(m, _OBSERVED)}
    flow = _Flow({}, {}, {})
    alive: list[object] = []  # tensors stay alive, so their ids are not reused during the pass

    def before(name: str, module: nn.Module, args: tuple) -> None:
        alive.append(args)
        flow.read.setdefault(name, [id(a) for a in args if isinstance(a, torch.Tensor)])

    def after(name: str, module: nn.Module, args: tuple, output: object) -> None:
        alive.append(output)
        if isinstance(output, torch.Tensor):
            flow.outputs.setdefault(name, []).append(id(output))
            flow.produced.setdefault(id(output), name)

    run_hooked(twin, [(names[id(m)], m) for m in twin.modules() if id(m) in names], run, before, after)
    return flow


def _share(model: nn.Module, flow: _Flow, consumers: Collection[str] | None) -> int:
    """Point the observed inputs of ``consumers`` (all: None) that are a producer's output tensor (one whose output
    is requantized, not float) at its output observer; returns how many share."""
    def producer_of(key: object) -> nn.Module | None:
        name = flow.produced.get(key)  # type: ignore[call-overload]
        module = None if name is None else model.get_submodule(name)
        return None if module is None or getattr(module, "float_output", False) else module

    return sum(share_inputs(model.get_submodule(name), inputs, producer_of) for name, inputs in flow.read.items()
               if consumers is None or name in consumers)


def share_observers_eager(model: nn.Module, run: Callable[[nn.Module], object]) -> int:
    """Layer by layer (no graph): point each observed input that *is* an observed producer's output tensor at that
    producer's output observer, found in one forward pass (``run``) of a copy. Returns how many share."""
    return _share(model, _flow(model, run), None)


def head_dataflow(model: nn.Module, run: Callable[[nn.Module], object], head: Collection[str],
                  float_outputs: bool = True) -> tuple[int, list[str]]:
    """The observed layers ``head`` run as the model's own Python beside a captured graph (a task model's head
    around its base model): with ``float_outputs``, each Linear among them whose output no observed module reads
    keeps it float, as ``mixq.quant.graph.keep_float_outputs`` decides inside a graph (a classifier's logits); then
    their inputs that are an observed producer's output tensor share its grid. Returns ``(how many inputs share,
    the layers whose output stays float)``."""
    flow = _flow(model, run)
    read = {key for keys in flow.read.values() for key in keys}
    floats = []
    for name in head:
        layer = model.get_submodule(name)
        if (float_outputs and isinstance(layer, ObservedLayer) and isinstance(layer.layer, nn.Linear)
                and name in flow.outputs and not read.intersection(flow.outputs[name])):
            layer.float_output = True
            floats.append(name)
    return _share(model, flow, head), floats
