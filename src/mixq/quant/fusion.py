"""Conv+BatchNorm(+ReLU) and Linear(+ReLU) fusion, discovered from the model's real dataflow.

One probe forward pass with hooks on every leaf module records which tensor each module consumed and produced
(identity and version counter, so in-place ReLUs are seen). A BatchNorm whose input is exactly a convolution's
output is folded into that convolution's weights; a ReLU whose input is exactly a layer's (or its folded BN's)
output is fused, so the layer's output range starts at 0 and ONNX Runtime drops the ReLU into QLinearConv.
A bounded ReLU (``ReLU6``, ``Hardtanh(0, hi)``) fuses the same way with its upper bound recorded (``relu_max``):
the layer's output range is clamped to ``[0, hi]``, so the output quantization's saturation *is* the clamp and the
runtime sees Conv -> Relu -> QuantizeLinear, with no Clip and no extra Q/DQ pair (see ``relu_bound``).
Modules called more than once (shared) are never removed; this works for any eager model, not only Sequentials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mixq.quant.forward_hooks import run_hooked
from mixq.quant.modules.registry import kind_of
from mixq.quant.primitives import along

_CONVS = (nn.Conv1d, nn.Conv2d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Fusion:
    """A layer with the BatchNorm folded into it and/or a ReLU fused after it."""

    layer: str
    batchnorm: str | None = None
    relu: str | None = None
    relu_max: float | None = None  # the upper bound of a fused ReLU6 / Hardtanh(0, hi); None: a plain ReLU


def relu_bound(module: nn.Module | None) -> tuple[bool, float | None]:
    """``(fusable, upper bound)`` of an activation module: ``nn.ReLU`` -> ``(True, None)``; ``nn.ReLU6`` and
    ``nn.Hardtanh(0, hi)`` -> ``(True, hi)`` (a ReLU whose output quantization range ends at ``hi``, so
    saturating at the grid's top is the clamp); anything else (Hardtanh with a nonzero lower bound, whose clamp no
    ``[0, max]`` grid reproduces) -> ``(False, None)``."""
    if isinstance(module, nn.ReLU) and type(module).forward is nn.ReLU.forward:
        return True, None
    plain = isinstance(module, nn.Hardtanh) and type(module).forward is nn.Hardtanh.forward
    if plain and module.min_val == 0 and module.max_val > 0:  # type: ignore[union-attr]
        return True, float(module.max_val)  # type: ignore[union-attr]
    return False, None


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: list[tuple[int, int]]
    output: tuple[int, int] | None = None
    shape: tuple[int, ...] | None = None  # the first tensor input's shape


def _key(t: object) -> tuple[int, int] | None:
    return (id(t), t._version) if isinstance(t, torch.Tensor) else None


def relu_module(relu_max: float | None) -> nn.Module:
    """The float module a fused ReLU stands for: ``nn.ReLU``, ``nn.ReLU6`` or ``nn.Hardtanh(0, relu_max)``."""
    if relu_max is None:
        return nn.ReLU()
    return nn.ReLU6() if relu_max == 6 else nn.Hardtanh(0.0, relu_max)


def saturation_clamps(y_qparams: tuple[torch.Tensor, torch.Tensor] | None, relu_max: float | None,
                      qmax: int) -> bool:
    """Whether the output grid's top, ``(qmax - zero point) * scale``, is at most ``relu_max``: quantizing the
    ReLU's output then saturates there, which *is* the upper clamp (no clamp op needed)."""
    if relu_max is None:
        return True
    if y_qparams is None:
        return False
    scale, zp = y_qparams
    return bool(((qmax - zp.double()) * scale.double()).max() <= relu_max * (1 + 1e-6))


def trace_calls(model: nn.Module, run: Callable[[nn.Module], object]) -> list[_Call]:
    """Run ``run(model)`` once and record every leaf module call's input/output tensor identities."""
    calls: list[_Call] = []
    keep_alive: list[object] = []

    def pre_hook(name, module, args):
        keep_alive.append(args)
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        calls.append(_Call(name, module, [k for k in map(_key, args) if k is not None],
                           shape=None if first is None else tuple(first.shape)))

    def post_hook(name, module, args, output):
        keep_alive.append(output)
        for call in reversed(calls):
            if call.module is module and call.output is None:
                call.output = _key(output)
                break

    leaves = [(name, module) for name, module in model.named_modules() if name and not list(module.children())]
    run_hooked(model, leaves, run, pre_hook, post_hook)
    return calls


def find_fusions(calls: list[_Call]) -> list[Fusion]:
    """Layer -> BatchNorm -> ReLU chains in the traced dataflow (each removable module called exactly once)."""
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    consumers: dict[tuple[int, int], list[_Call]] = {}
    for c in calls:
        for k in c.inputs:
            consumers.setdefault(k, []).append(c)

    def sole_consumer(out: tuple[int, int] | None, types: tuple[type, ...]) -> _Call | None:
        users = consumers.get(out, []) if out else []
        if len(users) == 1 and isinstance(users[0].module, types) and counts[users[0].name] == 1:
            return users[0]
        return None

    fusions = []
    for c in calls:
        if counts[c.name] != 1 or not isinstance(c.module, (*_CONVS, nn.Linear)) or kind_of(c.module) is None:
            continue  # kind_of: a subclass with its own forward is not a Conv/Linear that a fused kernel can stand for
        fusion, out = Fusion(c.name), c.output
        bn = sole_consumer(out, _BNS) if isinstance(c.module, _CONVS) else None
        if bn is not None and bn.module.track_running_stats:
            fusion.batchnorm, out = bn.name, bn.output
        relu = sole_consumer(out, (nn.ReLU, nn.Hardtanh))
        fusable, upper = relu_bound(relu.module if relu is not None else None)
        if fusable:
            fusion.relu, fusion.relu_max = relu.name, upper  # type: ignore[union-attr]
        if fusion.batchnorm or fusion.relu:
            fusions.append(fusion)
    return fusions


def batchnorm_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``gamma / sqrt(running_var + eps)`` and ``beta``: the per-channel scale and shift of an eval-mode BatchNorm."""
    inv_std = torch.rsqrt(bn.running_var.to(torch.float32) + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(inv_std)
    beta = bn.bias if bn.affine else torch.zeros_like(inv_std)
    return gamma * inv_std, beta


def folded_weight_bias(weight: torch.Tensor, bias: torch.Tensor | None,
                       bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution weight and bias with ``bn``'s running statistics folded in (differentiable: QAT trains
    through it; post-training quantization folds with it once)."""
    factor, beta = batchnorm_affine(bn)
    bias = bias if bias is not None else torch.zeros_like(bn.running_mean)
    return weight * along(factor, weight.dim(), 0), (bias - bn.running_mean) * factor + beta


def fold_batchnorm(conv: nn.Conv1d | nn.Conv2d, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
    """Fold eval-mode BatchNorm statistics into the convolution's weight and bias, in place."""
    with torch.no_grad():
        weight, bias = folded_weight_bias(conv.weight, conv.bias, bn)
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias)
        else:
            conv.bias.copy_(bias)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def detach_fusions(model: nn.Module, fusions: list[Fusion]) -> tuple[dict[str, float | None],
                                                                        dict[str, nn.Module]]:
    """Take fused BatchNorms and ReLUs out of the dataflow (they become ``nn.Identity``) without folding.

    Returns ``{layer name: its ReLU's upper bound or None}`` for the layers a ReLU was fused into and
    ``{layer name: its BatchNorm module}``; QAT keeps those BatchNorms inside its layers to train them,
    post-training quantization folds them right away.
    """
    relu_layers: dict[str, float | None] = {}
    batchnorms = {}
    for f in fusions:
        if f.batchnorm:
            batchnorms[f.layer] = model.get_submodule(f.batchnorm)
            set_submodule(model, f.batchnorm, nn.Identity())
        if f.relu:
            set_submodule(model, f.relu, nn.Identity())
            relu_layers[f.layer] = f.relu_max
    return relu_layers, batchnorms


def apply_fusions(model: nn.Module, fusions: list[Fusion]) -> dict[str, float | None]:
    """Fold/fuse in place; folded BatchNorms and fused ReLUs become ``nn.Identity``.

    Returns ``{layer name: upper bound or None}`` for the layers a ReLU (or ReLU6 / Hardtanh(0, hi)) was fused into.
    """
    relu_layers, batchnorms = detach_fusions(model, fusions)
    for layer, bn in batchnorms.items():
        fold_batchnorm(model.get_submodule(layer), bn)
    return relu_layers


def calls_from_graph(model: nn.Module) -> list[_Call] | None:
    """The same call records as ``trace_calls``, read from a ``torch.fx`` trace instead of a probe forward pass
    (no example input needed); None when the model does not trace. Function and method calls are recorded too,
    so a layer whose output also feeds e.g. an ``add`` is never fused away."""
    from torch import fx

    try:
        graph = fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001  (untraceable: the caller falls back)
        return None
    calls = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        inputs = [(id(a), 0) for a in node.all_input_nodes]
        name = node.target if module is not None else f"<{node.name}>"
        calls.append(_Call(name, module, inputs, (id(node), 0)))  # type: ignore[arg-type]
    return calls
