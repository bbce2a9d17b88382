"""What ``mixq.autoquantize`` found and did: the sensitivity table, the search trace, the chosen precisions and
fp32 vs mixq dynamic vs all-int8 vs chosen at each deploy shape; as a dict (JSON), Markdown and a PNG of per-layer
sensitivity."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixq.auto.sensitivity import LayerSensitivity


@dataclass(frozen=True)
class Step:
    """One evaluated configuration of the search: what changed, the metric, and whether it meets the target."""

    index: int
    action: str
    metric: float
    meets: bool
    evaluations: int


@dataclass(frozen=True)
class ComparedModel:
    """One of the models the report compares (fp32, dynamic, all-int8 or chosen): its metric (None for mixq dynamic,
    which is measured but not evaluated) and, when measured on ONNX Runtime, latency (ms) at each deploy shape
    (``latency_by_shape``, e.g. ``{"1x128": ..., "32x128": ...}``; ``latency_ms`` is the first deploy shape's) and
    file size."""

    name: str
    metric: float | None
    latency_ms: float | None = None
    size_bytes: int | None = None
    latency_by_shape: dict[str, float] = field(default_factory=dict)


def _db(value: float) -> str:
    return "inf" if not math.isfinite(value) else f"{value:.1f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@dataclass
class AutoQuantReport:
    """Everything ``autoquantize`` measured and decided. ``print(report)`` or ``report.to_markdown()`` to read it,
    ``report.to_dict()`` for JSON, ``report.save_plot(path)`` for the per-layer sensitivity PNG."""

    objective: str
    max_drop: float
    relative: bool
    baseline: float
    required: float
    met: bool
    miss: float
    evaluations: int
    max_evals: int
    sensitivity: list[LayerSensitivity] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    precisions: dict[str, str] = field(default_factory=dict)
    variants: list[ComparedModel] = field(default_factory=list)
    layer_latency_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    runtime: str = "ORT"  # where latency was measured (``Runtime.display``)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective, "max_drop": self.max_drop, "relative": self.relative,
            "baseline": self.baseline, "required": self.required, "met": self.met, "miss": self.miss,
            "evaluations": self.evaluations, "max_evals": self.max_evals,
            "sensitivity": [r.to_dict() for r in self.sensitivity],
            "steps": [vars(s) for s in self.steps], "precisions": dict(self.precisions),
            "variants": [{**vars(v), "latency_by_shape": dict(v.latency_by_shape)} for v in self.variants],
            "layer_latency_ms": dict(self.layer_latency_ms),
            "notes": list(self.notes), "seconds": dict(self.seconds), "runtime": self.runtime,
        }

    def to_markdown(self) -> str:
        kind = f"{self.max_drop:.2%} relative" if self.relative else f"{self.max_drop:g} absolute"
        status = "met" if self.met else f"**missed by {self.miss:.4g}**"
        lines = [f"# mixq autoquantize (objective: {self.objective})", "",
                 f"Target: metric >= {self.required:.4f} (fp32 baseline {self.baseline:.4f}, max drop {kind}): "
                 f"{status}. Evaluations: {self.evaluations} of {self.max_evals}.", ""]
        lines += self._variants_table() + self._sensitivity_section() + self._search_section()
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        if self.seconds:
            lines += ["", "Time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())]
        return "\n".join(lines) + "\n"

    def _variants_table(self) -> list[str]:
        """One latency column per deploy shape (one "ORT latency (ms)" column when there is one shape, named after
        the runtime); a
        ``vs dynamic`` time ratio per shape when the mixq dynamic row is there."""
        shapes = list(dict.fromkeys(s for v in self.variants for s in v.latency_by_shape))
        dynamic = next((v for v in self.variants if v.name == "dynamic" and v.latency_by_shape), None)
        if len(shapes) > 1:
            heads = [f"{self.runtime} ms @ {s}" for s in shapes]
            heads += [f"vs dynamic @ {s}" for s in shapes] if dynamic else []
        else:
            heads = [f"{self.runtime} latency (ms)"] + (["vs dynamic"] if dynamic else [])
        lines = ["| model | metric | Δ vs fp32 | " + " | ".join(heads) + " | ONNX size (KB) |",
                 "|---|---:|---:|" + "---:|" * (len(heads) + 1)]
        return lines + [self._variant_row(v, shapes, dynamic) for v in self.variants]

    def _variant_row(self, v: ComparedModel, shapes: list[str], dynamic: ComparedModel | None) -> str:
        delta = None if v.metric is None else v.metric - self.baseline
        size = None if v.size_bytes is None else v.size_bytes / 1024
        times = _times(v, shapes)
        cells = [_num(t, ".3f") for t in times]
        if dynamic:
            cells += [_ratio(t, b) for t, b in zip(times, _times(dynamic, shapes), strict=True)]
        return (f"| {v.name} | {_num(v.metric, '.4f')} | {_num(delta, '+.4f')} | " + " | ".join(cells)
                + f" | {_num(size, '.1f')} |")

    def _sensitivity_section(self) -> list[str]:
        lines = ["", "## Per-layer sensitivity (worst first)", "",
                 "| layer | type | output SQNR (dB) | layer SQNR (dB) | eval drop alone | chosen | reason |",
                 "|---|---|---:|---:|---:|---|---|"]
        for r in self.sensitivity:
            lines.append(f"| {r.name} | {r.kind} | {_db(r.output_sqnr_db)} | {_db(r.layer_sqnr_db)} | "
                         f"{_num(r.eval_drop, '+.4f')} | {self.precisions.get(r.name, '-')} | {r.reason} |")
        lines += ["", "Model-output SQNR (dB) with each layer alone at each precision:", ""]
        for r in self.sensitivity:
            lines.append(f"- {r.name}: " + ", ".join(f"{k} {_db(v)}" for k, v in r.rung_sqnr_db.items()))
        if self.layer_latency_ms:
            lines += ["", f"{self.runtime} latency (ms) of each layer alone in int8 (paired against fp32, see the "
                      "notes):", ""]
            lines += [f"- {k}: {v:.3f}" for k, v in self.layer_latency_ms.items()]
        return lines

    def _search_section(self) -> list[str]:
        lines = ["", "## Search", "", "| step | change | metric | meets target | evaluations |",
                 "|---:|---|---:|---|---:|"]
        lines += [f"| {s.index} | {s.action} | {s.metric:.4f} | {'yes' if s.meets else 'no'} | {s.evaluations} |"
                  for s in self.steps]
        return lines

    def __str__(self) -> str:
        return self.to_markdown()

    def save_plot(self, path: str | os.PathLike) -> Path:
        """Horizontal bars of each layer's model-output SQNR with only it in int8 (worst at the top), colored by
        the precision chosen for it; needs matplotlib."""
        from matplotlib.figure import Figure

        rows = self.sensitivity
        fig = Figure(figsize=(7, 0.45 * len(rows) + 1.4), dpi=100, layout="constrained")
        ax = fig.subplots()
        values = [min(r.output_sqnr_db, 120.0) for r in rows]
        colors = ["tab:blue" if self.precisions.get(r.name, "").startswith("int8") else "tab:orange" for r in rows]
        ax.barh([r.name for r in rows], values, color=colors)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values + [1.0]) * 1.3)  # room for the precision labels
        for y, r in enumerate(rows):
            ax.text(values[y], y, f" {self.precisions.get(r.name, '')}", va="center", fontsize=8)
        ax.set_xlabel("model-output SQNR with only this layer int8 (dB, higher is better)")
        ax.set_title("mixq autoquantize: per-layer sensitivity\n(blue: int8 kept, orange: moved to a safer precision)",
                     fontsize=10)
        from mixq.report.files import atomic_path

        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        return Path(path)

    def write(self, directory: str | os.PathLike, stem: str = "autoquant") -> dict[str, Path]:
        """Write ``{stem}.md``, ``{stem}.json`` and ``{stem}.png`` into ``directory`` (created if missing)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": folder / f"{stem}.md", "json": folder / f"{stem}.json", "plot": folder / f"{stem}.png"}
        paths["markdown"].write_text(self.to_markdown())
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.save_plot(paths["plot"])
        return paths


def _times(v: ComparedModel, shapes: list[str]) -> list[float | None]:
    """A model's latency per deploy shape (its one latency when there is a single shape)."""
    return [v.latency_by_shape.get(s) for s in shapes] if len(shapes) > 1 else [v.latency_ms]


def _ratio(time: float | None, base: float | None) -> str:
    """``time / base`` as ``0.85x``, or ``-`` when either is missing."""
    return _num(None if time is None or not base else time / base, ".2f") + ("x" if time and base else "")
