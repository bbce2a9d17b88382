"""Opt-in numerics report: how close a model's activations and gradients come to fp16's limits.

For a few sampled optimizer steps, :class:`NumericsRecorder` records per layer

* the fraction of gradient values that would flush to zero in fp16 without loss scaling and with the current
  scale (an exact test: a value underflows when ``value.half() == 0`` while ``value != 0``),
* the largest activation magnitude against fp16's maximum (65504),
* the first layer (in execution order) whose output, and the first (in module order) whose gradient,
  is inf/NaN,

and :class:`NumericsReport` turns the samples into Markdown with recommendations. Nothing is hooked on steps
that are not sampled, and nothing at all when diagnostics are off.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

__all__ = [
    "FP16_MAX",
    "LayerNumerics",
    "NumericsConfig",
    "NumericsRecorder",
    "NumericsReport",
    "NumericsSample",
]

FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclasses.dataclass(frozen=True)
class NumericsConfig:
    """Which steps to sample and what counts as a problem.

    Attributes:
        every: sample optimizer steps 0, every, 2*every, ...
        max_samples: stop sampling after this many steps.
        underflow_warn: per-layer underflow fraction worth a recommendation.
        near_overflow: fraction of fp16's max above which an activation is reported as "near overflow".

    Example:
        >>> NumericsConfig(every=50, max_samples=3).wants(100, taken=1)
        True
    """

    every: int = 100
    max_samples: int = 5
    underflow_warn: float = 0.01
    near_overflow: float = 0.5

    def __post_init__(self) -> None:
        if self.every < 1 or self.max_samples < 1:
            raise ValueError(f"every and max_samples must be >= 1, got {self.every} and {self.max_samples}")
        if not (0 < self.underflow_warn < 1 and 0 < self.near_overflow <= 1):
            raise ValueError("underflow_warn must be in (0, 1) and near_overflow in (0, 1]")

    def wants(self, step: int, taken: int) -> bool:
        """Whether ``step`` is sampled, given ``taken`` samples so far."""
        return taken < self.max_samples and step % self.every == 0


@dataclasses.dataclass(frozen=True)
class LayerNumerics:
    """One layer in one sampled step (fractions are of the layer's gradient values; NaN when not finite)."""

    name: str
    grad_numel: int
    underflow_unscaled: float
    underflow_scaled: float
    grad_finite: bool
    act_max_abs: float | None


@dataclasses.dataclass(frozen=True)
class NumericsSample:
    """All layers of one sampled step."""

    step: int
    scale: float
    layers: tuple[LayerNumerics, ...]
    first_nonfinite_activation: str | None
    first_nonfinite_grad: str | None


def _underflow(true_grad: torch.Tensor, scale: float) -> float:
    nonzero = true_grad != 0
    lost = ((true_grad * scale).to(torch.float16) == 0) & nonzero
    return lost.sum().item() / max(true_grad.numel(), 1)


class NumericsRecorder:
    """Collects a :class:`NumericsSample` for each step ``config`` selects (used by ``MixedPrecision``)."""

    def __init__(self, model: nn.Module, config: NumericsConfig) -> None:
        self.model, self.config = model, config
        self.samples: list[NumericsSample] = []
        self._act: dict[str, float] = {}
        self._first_bad_act: str | None = None
        self._handles: list[Any] = []

    def wants(self, step: int) -> bool:
        return self.config.wants(step, len(self.samples))

    def start_forward(self) -> None:
        """Hook every leaf module to record its output's max magnitude (idempotent within a step)."""
        if self._handles:
            return
        for name, module in self.model.named_modules():
            if name and not any(True for _ in module.children()):
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def stop_forward(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.numel():
                with torch.no_grad():
                    peak = output.detach().abs().max().float().item()
                self._act[name] = max(self._act.get(name, 0.0), peak)
                if not math.isfinite(peak) and self._first_bad_act is None:
                    self._first_bad_act = name

        return hook

    @torch.no_grad()
    def record_grads(self, step: int, grad_scale: float, probe_scale: float) -> NumericsSample:
        """Measure gradients (currently multiplied by ``grad_scale``) and close the step's sample.

        ``probe_scale`` is the loss scale the "underflow at scale" column is evaluated at: the live scale under
        fp16, PyTorch's default 2**16 for policies that do not scale.
        """
        layers, first_bad = [], None
        for name, module in self.model.named_modules():
            grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
            if not grads:
                continue
            true = torch.cat([g.detach().float().flatten() for g in grads]) / grad_scale
            finite = bool(torch.isfinite(true).all())
            if not finite and first_bad is None:
                first_bad = name or "<root>"
            unscaled = _underflow(true, 1.0) if finite else math.nan
            scaled = _underflow(true, probe_scale) if finite else math.nan
            layers.append(LayerNumerics(name or "<root>", true.numel(), unscaled, scaled, finite, self._act.get(name)))
        sample = NumericsSample(step, probe_scale, tuple(layers), self._first_bad_act, first_bad)
        self.samples.append(sample)
        self._act, self._first_bad_act = {}, None
        return sample


@dataclasses.dataclass(frozen=True)
class NumericsReport:
    """The sampled steps of a run plus the policy, rendered by :meth:`to_markdown`.

    Example:
        >>> print(mp.numerics_report())  # doctest: +SKIP
    """

    samples: tuple[NumericsSample, ...]
    policy: str
    config: NumericsConfig = NumericsConfig()

    def worst_layers(self) -> dict[str, LayerNumerics]:
        """Per layer, the sampled record with the highest unscaled underflow fraction."""
        worst: dict[str, LayerNumerics] = {}
        for sample in self.samples:
            for layer in sample.layers:
                old = worst.get(layer.name)
                key = -1.0 if math.isnan(layer.underflow_unscaled) else layer.underflow_unscaled
                if old is None or key > (-1.0 if math.isnan(old.underflow_unscaled) else old.underflow_unscaled):
                    worst[layer.name] = layer
        return worst

    def peak_activation(self) -> dict[str, float]:
        """Per layer, the largest activation magnitude over the sampled steps."""
        peaks: dict[str, float] = {}
        for sample in self.samples:
            for layer in sample.layers:
                if layer.act_max_abs is not None:
                    peaks[layer.name] = max(peaks.get(layer.name, 0.0), layer.act_max_abs)
        return peaks

    def recommendations(self) -> list[str]:
        """Plain-language advice drawn from the samples."""
        if not self.samples:
            return ["No step was sampled yet: run at least one step with diagnostics on."]
        cfg, fp16 = self.config, ", c=f16," in f",{self.policy},"
        out: list[str] = []
        for sample in self.samples:
            bad = sample.first_nonfinite_activation
            if bad:
                out.append(
                    f"Step {sample.step}: '{bad}' is the first layer whose output is inf/NaN; "
                    f"keep it in fp32 (keep_fp32=['{bad}']) or use bf16."
                )
                break
        over = {n: v for n, v in self.peak_activation().items() if v >= cfg.near_overflow * FP16_MAX}
        for name, peak in sorted(over.items(), key=lambda kv: -kv[1])[:3]:
            verdict = "exceed" if peak >= FP16_MAX else "come close to"
            advice = f"switch to bf16 or keep '{name}' in fp32" if fp16 else f"keep '{name}' in fp32 under fp16"
            out.append(f"Activations of '{name}' reach {peak:.3g} and {verdict} fp16's max {FP16_MAX:g}: {advice}.")
        worst = self.worst_layers().values()
        lost_scaled = [w for w in worst if w.underflow_scaled >= cfg.underflow_warn]
        lost_unscaled = [w for w in worst if w.underflow_unscaled >= cfg.underflow_warn]
        scale = f"{self.samples[-1].scale:g}"
        for w in sorted(lost_scaled, key=lambda w: -w.underflow_scaled)[:3]:
            advice = "use bf16 or a larger loss scale" if fp16 else "stay off fp16 for this model (bf16 is fine)"
            out.append(
                f"'{w.name}' would lose {w.underflow_scaled:.1%} of its gradient values to fp16 underflow "
                f"even at loss scale {scale}: {advice}."
            )
        if lost_unscaled and not lost_scaled:
            names = ", ".join(f"'{w.name}' ({w.underflow_unscaled:.1%})" for w in lost_unscaled[:3])
            advice = "the loss scaling in use prevents this" if fp16 else "fp16 would need loss scaling"
            out.append(f"Without loss scaling fp16 would flush gradients of {names} to zero: {advice}.")
        if not out:
            out.append(f"No fp16 range problems in {len(self.samples)} sampled step(s): the current policy is safe.")
        return out

    def to_markdown(self) -> str:
        """A Markdown report: one row per layer (worst sample), then the recommendations."""
        peaks = self.peak_activation()
        lines = [
            f"## Numerics report (policy {self.policy}, {len(self.samples)} sampled step(s))",
            "",
            "| layer | grad values | fp16 underflow w/o scaling | fp16 underflow at scale | max abs activation "
            "| / fp16 max |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, w in self.worst_layers().items():
            peak = peaks.get(name)
            act = "-" if peak is None else f"{peak:.3g} | {peak / FP16_MAX:.2e}"
            act = act if peak is not None else "- | -"
            lines.append(f"| {name} | {w.grad_numel} | {w.underflow_unscaled:.2%} | {w.underflow_scaled:.2%} | {act} |")
        bad = [(s.step, s.first_nonfinite_activation, s.first_nonfinite_grad) for s in self.samples]
        bad = [b for b in bad if b[1] or b[2]]
        if bad:
            lines += ["", "| step | first inf/NaN activation | first inf/NaN gradient |", "|---:|---|---|"]
            lines += [f"| {s} | {a or '-'} | {g or '-'} |" for s, a, g in bad]
        lines += ["", "### Recommendations", ""] + [f"- {r}" for r in self.recommendations()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()
