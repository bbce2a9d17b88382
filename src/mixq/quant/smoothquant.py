"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before int8 quantization.

A few hidden channels of a transformer's activations are often 10-100x larger than the rest; one per-tensor int8
scale then spends its range on them and rounds every other channel to a handful of levels. SmoothQuant divides
each input channel ``j`` of a Linear by ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` and multiplies the
weight's column ``j`` by it: ``(X / s) @ (W * s).T == X @ W.T``. The division is folded into whatever produced
``X`` (a LayerNorm's weight and bias, or a Linear's output rows and bias), so the float model computes the same
function and the exported graph gains no operator.

A fold is only exact when the producer's output reaches nothing but the smoothed Linears (a LayerNorm whose output
also feeds a residual add, as in post-LN BERT, cannot be folded) through channel-preserving ops (attention's
``probs @ V`` keeps V's channels; ReLU is positively homogeneous; GELU is not). mixq therefore proposes pairs from
the model's real dataflow (one probe forward pass) and *verifies* each fold numerically with random scales before
using it. Where a fold is not exact and every consumer is a static layer, the division moves into the consumers'
own quantization instead (``explicit``): the float weights stay as they are and each consumer records ``s`` as
``mixq_smooth``; its quantized form stores ``W * s`` and multiplies its input by ``1 / s`` before quantizing it (one
elementwise Mul in the exported graph, as NNCF's SmoothQuant inserts), so the float function is still unchanged.
Other pairs that fail stay unsmoothed and the summary says so.

``alpha`` (0..1) is how much of the difficulty moves to the weights. ``alpha="auto"`` picks it per smoothed group
from a grid (0.0 .. 1.0 in steps of 0.1, plus no smoothing at all) by the error of the group's int8 output on
cached calibration rows: activations quantized per tensor as the mode does, weights per channel.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mixq.quant.calibration import Batch, call_checked, call_model, run_batches
from mixq.quant.fusion import trace_calls
from mixq.quant.graft import copy_model
from mixq.quant.planning import excluded
from mixq.quant.primitives import choose_qparams, dequantize, quantize
from mixq.quant.spec import SMOOTH_LAYERNORM, QuantConfig
from mixq.quant.weights import quantize_weight

logger = logging.getLogger(__name__)

AUTO_GRID = tuple(i / 10 for i in range(11))
_MIN = 1e-5  # floor for channel maxima, so a dead channel gets a finite scale
_ROWS_PER_BATCH, _MAX_ROWS = 128, 1024  # calibration rows kept per group for alpha="auto"
_INT8_MODES = ("static", "dynamic")
_TOLERANCE = 1e-4  # relative change of a module output that counts as "changed" in fold verification
# the static default ("layernorm") smooths a group only when its largest input-channel maximum is at least this
# many times the median channel's: one per-tensor int8 grid then spends 2 bits or more of its range on a few
# outlier channels (all-MiniLM-L6-v2: 3-21; a random-weight model's channels: 1.3-2.7)
OUTLIER_SPREAD = 4.0


@dataclass
class SmoothGroup:
    """Linears that read the same activation, and the module (norm or Linear) whose output it is."""

    producer: str
    consumers: tuple[str, ...]
    alpha: float | None = None  # chosen alpha; None: left unsmoothed
    shared_input: bool = True  # the consumers read one tensor (False: paired only by width with the producer)
    explicit: bool = False  # not foldable: the consumers' quantized forms divide their input (``mixq_smooth``)
    x_absmax: torch.Tensor | None = field(default=None, repr=False)
    rows: list[torch.Tensor] = field(default_factory=list, repr=False)


def _is_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module).__name__.endswith("Norm") and isinstance(weight, torch.Tensor) and weight.dim() == 1
            and not isinstance(module, nn.modules.batchnorm._BatchNorm))


def candidate_groups(model: nn.Module, probe: Batch) -> list[SmoothGroup]:
    """Producer -> Linear pairs proposed from one probe pass: a norm or Linear whose output is a Linear's input,
    or, for a Linear whose input no module produced (attention's context), the nearest earlier Linear of matching
    width (e.g. V -> the attention output projection). Folding decides which of them are real (``verify``)."""
    try:  # the dataflow is the same on one sample
        calls = trace_calls(model, lambda m: call_model(m, _first(probe)))
    except Exception:  # noqa: BLE001  (inputs that are not batch-first)
        calls = trace_calls(model, lambda m: call_checked(m, probe))  # a batch the model cannot take: one line
    counts: dict[str, int] = {}
    for c in calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    producer_of: dict[tuple[int, int], object] = {}
    for c in calls:  # the first producer: eval-mode dropout hands the same tensor on
        if c.output is not None:
            producer_of.setdefault(c.output, c)
    groups: dict[tuple[str, tuple[int, int] | None], list[str]] = {}
    for i, c in enumerate(calls):
        if not isinstance(c.module, nn.Linear) or counts[c.name] != 1 or not c.inputs:
            continue
        source = producer_of.get(c.inputs[0])
        if source is not None and (isinstance(source.module, nn.Linear) or _is_norm(source.module)):
            key = (source.name, c.inputs[0])
        elif source is None or not isinstance(source.module, nn.Linear):
            earlier = [p for p in calls[:i] if isinstance(p.module, nn.Linear)
                       and p.module.out_features == c.module.in_features]
            if not earlier:
                continue
            key = (earlier[-1].name, None)
        else:
            continue
        if counts.get(key[0], 0) == 1 and c.name not in groups.get(key, []):
            groups.setdefault(key, []).append(c.name)
    return [SmoothGroup(producer, tuple(consumers), shared_input=key is not None)
            for (producer, key), consumers in groups.items()]


def fold(model: nn.Module, group: SmoothGroup, scale: torch.Tensor) -> None:
    """Divide the producer's output channels by ``scale`` and multiply the consumers' input columns by it."""
    producer = model.get_submodule(group.producer)
    with torch.no_grad():
        if isinstance(producer, nn.Linear):
            producer.weight.div_(scale.reshape(-1, 1))
        else:
            producer.weight.div_(scale)
        if getattr(producer, "bias", None) is not None:
            producer.bias.div_(scale)
        for name in group.consumers:
            model.get_submodule(name).weight.mul_(scale)


def _outputs(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict) or hasattr(value, "values") and callable(value.values):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    return []


def _map(batch: object, fn: object) -> object:
    if isinstance(batch, torch.Tensor):
        return fn(batch)  # type: ignore[operator]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_map(b, fn) for b in batch)
    if isinstance(batch, dict):
        return {k: _map(v, fn) for k, v in batch.items()}
    return batch


def _first(batch: object) -> object:
    """``batch`` cut to its first sample (dataflow and fold checks are about the graph, not the data)."""
    return _map(batch, lambda t: t[:1] if t.dim() > 0 else t)


class _Differs(Exception):
    """Raised from a hook to stop a verification pass at the first output a fold must not change."""


def _record(model: nn.Module, probe: Batch) -> list[tuple[str, list[torch.Tensor]]]:
    """Every leaf module call's name and float outputs, in call order, then the model's outputs (``""``)."""
    calls: list[tuple[str, list[torch.Tensor]]] = []
    handles = [m.register_forward_hook(lambda m, a, o, n=n: calls.append((n, [t.clone() for t in _outputs(o)])))
               for n, m in model.named_modules() if n and not list(m.children())]
    try:
        calls.append(("", _outputs(call_model(model, probe))))
    finally:
        for h in handles:
            h.remove()
    return calls


def _unchanged(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    pairs = zip(after, before, strict=True)
    return len(before) == len(after) and all(
        a.shape == b.shape and (a - b).norm() <= _TOLERANCE * b.norm() + 1e-12 for a, b in pairs)


def _exact(model: nn.Module, probe: Batch, reference: list[tuple[str, list[torch.Tensor]]],
           group: SmoothGroup) -> bool:
    """Run the folded ``model``: every call's output must equal the reference, except the producer's and those
    between it and the last consumer that are not consumers (dropout, reshapes, ReLU carry the scaled
    activation). Stops at the first difference."""
    names = [n for n, _ in reference]
    first = names.index(group.producer)
    last = max((i for i, n in enumerate(names) if n in group.consumers), default=-1)
    if last < first:
        return False
    step = iter(range(len(names)))

    def check(name: str, outputs: list[torch.Tensor]) -> None:
        i = next(step, None)
        if i is None or names[i] != name:
            raise _Differs
        free = i == first or (first < i < last and name not in group.consumers)
        if not free and not _unchanged(reference[i][1], outputs):
            raise _Differs

    handles = [m.register_forward_hook(lambda m, a, o, n=n: check(n, _outputs(o)))
               for n, m in model.named_modules() if n and not list(m.children())]
    try:
        check("", _outputs(call_model(model, probe)))
    except _Differs:
        return False
    finally:
        for h in handles:
            h.remove()
    return next(step, None) is None


def _fits(model: nn.Module, group: SmoothGroup) -> bool:
    producer = model.get_submodule(group.producer)
    width = producer.out_features if isinstance(producer, nn.Linear) else producer.weight.numel()
    return all(model.get_submodule(n).in_features == width for n in group.consumers)


def verify(model: nn.Module, groups: list[SmoothGroup], probe: Batch) -> list[SmoothGroup]:
    """The groups whose fold is exact, checked on one sample with random scales in [0.25, 4]: every module's
    output is compared (see ``_exact``), so a path the final output is merely insensitive to still fails. A wrong
    fold changes some output by tens of percent; float32 rounding stays below ``_TOLERANCE``. ``model`` is left
    exactly as it was."""
    sample = _first(probe)
    try:
        with torch.no_grad():
            reference = _record(model, sample)
    except Exception:  # noqa: BLE001  (a model whose inputs are not batch-first: check on the whole probe)
        sample = probe
        with torch.no_grad():
            reference = _record(model, sample)
    exact = []
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in groups:
            if counts_once(reference, group.producer) and _fits(model, group):
                width = model.get_submodule(group.consumers[0]).in_features
                scale = 4.0 ** (torch.rand(width, generator=generator) * 2 - 1)
                saved = {n: {k: v.clone() for k, v in model.get_submodule(n).state_dict().items()}
                         for n in (group.producer, *group.consumers)}
                fold(model, group, scale)
                if _exact(model, sample, reference, group):
                    exact.append(group)
                for name, state in saved.items():
                    model.get_submodule(name).load_state_dict(state)
    return exact


def counts_once(calls: list[tuple[str, list[torch.Tensor]]], name: str) -> bool:
    """True when module ``name`` ran exactly once (a shared module cannot be folded for one of its uses)."""
    return sum(n == name for n, _ in calls) == 1


def _collect(model: nn.Module, groups: list[SmoothGroup], batches: Iterable[Batch], keep_rows: bool,
             progress: bool) -> None:
    """Per-channel max |x| of each group's input over the calibration batches (and a sample of rows)."""
    generator = torch.Generator().manual_seed(0)

    def hook(group: SmoothGroup, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        absmax = rows.abs().amax(dim=0)
        group.x_absmax = absmax if group.x_absmax is None else torch.maximum(group.x_absmax, absmax)
        if keep_rows:
            pick = torch.randperm(rows.shape[0], generator=generator)[:_ROWS_PER_BATCH]
            group.rows.append(rows[pick].clone())

    handles = [model.get_submodule(g.consumers[0]).register_forward_pre_hook(
        lambda m, args, g=g: hook(g, args[0])) for g in groups]
    try:
        run_batches(model, batches, desc="smoothquant statistics", progress=progress)
    finally:
        for h in handles:
            h.remove()


def spread(x_absmax: torch.Tensor) -> float:
    """Largest input-channel maximum over the median channel's (how far outlier channels stretch the range)."""
    return float(x_absmax.max() / x_absmax.median().clamp_min(_MIN))


def smoothing_scale(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``max|X_j|**alpha / max|W_j|**(1 - alpha)`` per input channel ``j`` (floored, so never 0 or inf)."""
    x, w = x_absmax.clamp_min(_MIN), w_absmax.clamp_min(_MIN)
    return (x.pow(alpha) / w.pow(1.0 - alpha)).clamp_min(_MIN)


def _weight(model: nn.Module, group: SmoothGroup) -> torch.Tensor:
    return torch.cat([model.get_submodule(n).weight.detach().to(torch.float32) for n in group.consumers])


def _int8_error(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, config: QuantConfig) -> float:
    """Squared error of ``x @ w.T`` with ``x / scale`` quantized per tensor (uint8 min-max) and ``w * scale`` per
    channel (the config's weight spec), against float."""
    xs, ws = x / scale, w * scale
    spec = config.activation
    x_scale, x_zp = choose_qparams(xs.min(), xs.max(), spec.torch_dtype, symmetric=spec.symmetric, bits=spec.bits,
                                   narrow=spec.narrow_range and spec.symmetric)
    xq = dequantize(quantize(xs, x_scale, x_zp), x_scale, x_zp)
    wq, w_scale = quantize_weight(ws, config.weight, axis=0)
    wdq = dequantize(wq, w_scale, None, axis=0 if w_scale.dim() == 1 else None)
    return (xq @ wdq.T - x @ w.T).pow(2).sum().item()


def choose_alpha(x: torch.Tensor, w: torch.Tensor, x_absmax: torch.Tensor, config: QuantConfig) -> float | None:
    """The alpha of ``AUTO_GRID`` (or None: no smoothing) whose int8 output error on rows ``x`` is lowest."""
    w_absmax = w.abs().amax(dim=0)
    best, best_error = None, _int8_error(x, w, torch.ones_like(x_absmax), config)
    for alpha in AUTO_GRID:
        error = _int8_error(x, w, smoothing_scale(x_absmax, w_absmax, alpha), config)
        if error < best_error:
            best, best_error = alpha, error
    return best


def _wanted(group: SmoothGroup, config: QuantConfig) -> bool:
    """At least one consumer gets int8 activations (static or dynamic) and is not excluded."""
    return any(not excluded(n, config.exclude) and config.choice(n).mode in _INT8_MODES for n in group.consumers)


def _all_static(group: SmoothGroup, config: QuantConfig) -> bool:
    return all(not excluded(n, config.exclude) and config.choice(n).mode == "static" for n in group.consumers)


def explicit_groups(groups: list[SmoothGroup], config: QuantConfig) -> list[SmoothGroup]:
    """Groups that could not be folded but whose consumers are all static: each smooths in its consumers'
    quantization (``explicit``). Consumers paired only by width may read different tensors: one group each."""
    out = []
    for group in groups:
        if _all_static(group, config):
            parts = [group.consumers] if group.shared_input else [(n,) for n in group.consumers]
            out += [SmoothGroup(group.producer, part, explicit=True) for part in parts]
    return out


def _apply(model: nn.Module, group: SmoothGroup, scale: torch.Tensor) -> None:
    """Fold ``scale`` (an exact group) or record it on the consumers (``mixq_smooth``, an explicit group)."""
    if not group.explicit:
        fold(model, group, scale)
        return
    for name in group.consumers:
        model.get_submodule(name).mixq_smooth = scale.detach().to(torch.float32).clone()


def _runtime_fuses_scale(config: QuantConfig) -> bool:
    """Whether the runtime the model is quantized for folds an input Mul into its quantization (OpenVINO) rather
    than running it as an extra pass (ONNX Runtime, the default target)."""
    return _runtime_says(config, "fuses_input_scale")


def _runtime_says(config: QuantConfig, flag: str) -> bool:
    """A ``Runtime`` class flag of the runtime the model is quantized for (False without one)."""
    if config.runtime is None:
        return False
    from mixq.export.backend import get_runtime

    return bool(getattr(get_runtime(config.runtime), flag))


def smooth(model: nn.Module, alpha: float | str, config: QuantConfig, probe: Batch, batches: Iterable[Batch], *,
           progress: bool = True) -> tuple[nn.Module, list[str]]:
    """A smoothed copy of ``model`` (``model`` is not modified) and notes for the summary.

    ``alpha`` is a number in [0, 1], ``"auto"`` or ``"layernorm"`` (``"auto"`` if a LayerNorm feeds one of the
    candidate Linears, else ``model`` itself is returned untouched); ``batches`` give the activation statistics.
    Groups that fold exactly are folded; the others whose consumers are all static are smoothed in those consumers'
    quantization (``explicit_groups``): always for a number or ``"auto"``, and for the ``"layernorm"`` default only
    when ``config.runtime`` folds the input Mul into its quantization (OpenVINO; ONNX Runtime runs it as a pass).
    For a runtime whose default smooths every group (``Runtime.smooths_every_group``: LiteRT), ``"layernorm"`` is
    ``"auto"`` on a model with a LayerNorm. When there is neither, the copy is unchanged and no notes are returned.
    """
    outliers_only = alpha == SMOOTH_LAYERNORM  # the static default: "auto" on outlier groups of transformers
    if outliers_only and not any(_is_norm(m) for m in model.modules()):
        return model, []  # no norm can produce a candidate group: no copy, no probe pass
    smoothed = copy_model(model).eval()
    candidates = [g for g in candidate_groups(smoothed, probe) if _wanted(g, config)]
    if outliers_only:
        if not any(_is_norm(smoothed.get_submodule(g.producer)) for g in candidates):
            return model, []
        alpha = "auto"
        outliers_only = not _runtime_says(config, "smooths_every_group")  # LiteRT: every group "auto" smooths
    exact = verify(smoothed, candidates, probe)
    unfolded = [g for g in candidates if all(g is not e for e in exact)]
    explicit = explicit_groups(unfolded, config)
    in_layer = not outliers_only or _runtime_fuses_scale(config)  # the default smooths in int8 layers only there
    groups, skipped = (exact + explicit, []) if in_layer else (exact, explicit)
    if not groups:
        return smoothed, _not_in_layer(skipped)
    _collect(smoothed, groups, batches, alpha == "auto", progress)
    notes = []
    for group in groups:
        if group.x_absmax is None:
            continue  # never reached by the calibration data
        if outliers_only and spread(group.x_absmax) < OUTLIER_SPREAD:
            group.rows.clear()
            continue
        w = _weight(smoothed, group)
        if alpha == "auto":
            rows = torch.cat(group.rows)
            if rows.shape[0] > _MAX_ROWS:
                rows = rows[torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(1))[:_MAX_ROWS]]
            group.alpha = choose_alpha(rows, w, group.x_absmax, config)
            group.rows.clear()
        else:
            group.alpha = float(alpha)
        if group.alpha is not None:
            _apply(smoothed, group, smoothing_scale(group.x_absmax, w.abs().amax(dim=0), group.alpha))
    done = [g for g in groups if g.alpha is not None]
    lines = ", ".join(f"{g.producer} -> {'/'.join(c.rpartition('.')[2] for c in g.consumers)} "
                      f"(alpha {g.alpha:.1f}{', in the int8 layer' if g.explicit else ''})" for g in done)
    inside = sum(g.explicit for g in done)
    unused = sum(not _all_static(g, config) for g in unfolded)
    notes.append(f"smoothquant: {len(done)} of {len(groups)} smoothable groups smoothed"
                 + (f" ({inside} not foldable into their producer, e.g. a LayerNorm that also feeds a residual add "
                    "or a GELU output: their static layers multiply the input by 1/s before quantizing it)"
                    if inside else "")
                 + (f": {lines}" if lines else "")
                 + (f"; {unused} candidate pairs could not be folded exactly and have a non-static consumer"
                    if unused > 0 else "")
                 + ((f"; the rest have no outlier channels (largest channel maximum < {OUTLIER_SPREAD:g}x the "
                     "median's) or no alpha lowered their int8 error" if outliers_only else
                     "; alpha 'auto' kept the rest unsmoothed (no alpha lowered their int8 error)")
                    if alpha == "auto" and len(done) < len(groups) else ""))
    return smoothed, notes + _not_in_layer(skipped)


def _not_in_layer(skipped: list[SmoothGroup]) -> list[str]:
    """The note for groups the static default did not smooth inside int8 layers (see ``smooth``)."""
    if not skipped:
        return []
    return [f"smoothquant: {len(skipped)} groups that cannot be folded exactly are not smoothed inside their int8 "
            "layers by default (an extra Mul pass on ONNX Runtime, about 10% of a MiniLM file's time at batch 32); "
            "runtime='openvino' (which folds that Mul) or smoothquant='auto' smooths those with outlier channels "
            "(+0.005 cosine on all-MiniLM-L6-v2)"]
