"""Which layers compute a model output (a classifier's logits, a language model's scores): QAT keeps those outputs
float, as static graph mode does, instead of fake-quantizing them to uint8 with a range seen early in training.

A frozen uint8 grid on logits clamps them (and zeroes their gradient) outside the first batches' range, so training
stops; ONNX Runtime has no reason to requantize an output no integer kernel reads (``MatMulIntegerToFloat``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mixq.quant.calibration import Batch, call_model

# functions of one tensor that reshape, split or copy it, or apply an activation to it: an output made by them
# from a layer's output alone is still that layer's output (logits; BERT's pooler output, tanh of a Linear)
_SAME_VALUES = frozenset({
    "view", "reshape", "split", "chunk", "unbind", "squeeze", "unsqueeze", "contiguous", "transpose", "permute",
    "flatten", "__getitem__", "clone", "to", "float", "narrow", "select", "view_as", "reshape_as", "t", "detach",
    "tanh", "sigmoid", "softmax", "log_softmax", "relu", "gelu", "silu",
})


class _Lineage(TorchFunctionMode):
    """Follows tensors made from a layer's output by value-preserving functions."""

    def __init__(self) -> None:
        super().__init__()
        self.source: dict[int, tuple[torch.Tensor, str]] = {}  # id -> (tensor kept alive, layer name)

    def mark(self, tensor: torch.Tensor, name: str) -> None:
        self.source[id(tensor)] = (tensor, name)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        first = args[0] if args else None
        found = self.source.get(id(first)) if isinstance(first, torch.Tensor) else None
        if found is not None and found[0] is first and getattr(func, "__name__", "") in _SAME_VALUES:
            for leaf in tree_leaves(out):
                if isinstance(leaf, torch.Tensor):
                    self.mark(leaf, found[1])
        return out


def _leaves(output: Any) -> list[torch.Tensor]:
    if isinstance(output, dict):  # Hugging Face ModelOutput
        return [t for v in output.values() for t in tree_leaves(v) if isinstance(t, torch.Tensor)]
    return [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]


def output_layers(model: nn.Module, names: list[str], example_inputs: Batch) -> list[str]:
    """The Linear layers among ``names`` whose output is one of ``model``'s outputs (possibly reshaped or split,
    like question answering's start and end logits), found by running ``example_inputs`` once in eval mode."""
    lineage = _Lineage()
    hooks = [model.get_submodule(name).register_forward_hook(lambda _m, _i, out, n=name: lineage.mark(out, n))
             for name in names if isinstance(model.get_submodule(name), nn.Linear)]
    training = model.training
    try:
        model.eval()
        with torch.no_grad(), lineage:
            output = call_model(model, example_inputs)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    found = {lineage.source[id(t)][1] for t in _leaves(output) if id(t) in lineage.source
             and lineage.source[id(t)][0] is t}
    return [name for name in names if name in found]
