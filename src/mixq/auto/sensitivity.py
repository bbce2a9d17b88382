"""Per-layer sensitivity: the error each layer alone causes when quantized, measured on calibration data.

For every candidate layer and every rung of its ladder, the layer is quantized alone (from the one calibration, see
``mixq.quant.stages``) and run on the fp32 model's cached activations of a few calibration batches; one model pass
per layer measures how its error reaches the output. The signal-to-quantization-noise ratio (SQNR, dB, higher is
better) of the model output and of the layer's own output against the fp32 model rank the layers, worst first.
The reason column reads the calibration statistics: activation ranges stretched by outliers, weight ranges that
per-channel int8 represents poorly, or, failing those, accumulated noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mixq.auto.ladder import Rung, everything_float, only
from mixq.quant.calibration import Batch, call_model, tensors_of
from mixq.quant.conversion import (  # one, as convert_prepared
    _convert_layer,
    _Ranges,
    convert_graph_op,
    convert_prepared,
)
from mixq.quant.fusion import set_submodule
from mixq.quant.modules import ObservedAdd, ObservedLayer
from mixq.quant.observers import Observer
from mixq.quant.observers.histogram import HistogramObserver
from mixq.quant.spec import QuantConfig
from mixq.quant.stages import Prepared
from mixq.quant.summary import QuantizationSummary
from mixq.quant.weights import quantize_weight

OUTLIER_RATIO = 10.0  # full range / central 90 % range above which a tensor's range is "stretched by outliers"
WEAK_WEIGHT_SQNR_DB = 30.0
CORE = 0.90  # a Gaussian's full range is ~2.5-3x its central 90 %; an outlier-stretched one is 10x-1000x
MODEL_SQNR_ELEMENTS = 2**17  # model-output values that make a stable SQNR; more batches would only add model passes


@dataclass
class LayerSensitivity:
    """One layer's sensitivity: SQNR (dB) of the model output and of the layer output with only it in int8, the
    model-output SQNR at each rung of its ladder, the likely cause, and (within budget) its ``eval_fn`` drop."""

    name: str
    kind: str
    output_sqnr_db: float
    layer_sqnr_db: float
    rung_sqnr_db: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    eval_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def finite(v: float) -> float | None:
            return round(v, 2) if math.isfinite(v) else None

        return {"name": self.name, "kind": self.kind, "output_sqnr_db": finite(self.output_sqnr_db),
                "layer_sqnr_db": finite(self.layer_sqnr_db),
                "rung_sqnr_db": {k: finite(v) for k, v in self.rung_sqnr_db.items()}, "reason": self.reason,
                "eval_drop": self.eval_drop}


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors of a model output, as float32."""
    return (t.detach().to(torch.float32) for t in tensors_of(value) if t.is_floating_point())


class _Noise:
    """Accumulates signal and noise power over batches; ``db`` is the SQNR."""

    def __init__(self) -> None:
        self.signal, self.noise = 0.0, 0.0

    def add(self, ref: Any, out: Any) -> None:
        for r, o in zip(_tensors(ref), _tensors(out), strict=False):
            self.signal += float(r.double().pow(2).sum())
            self.noise += float((r.double() - o.double()).pow(2).sum())

    @property
    def db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return 10 * math.log10(max(self.signal, 1e-30) / self.noise)


def enough_batches(outputs: Sequence[Any]) -> int:
    """How many leading batches' model outputs hold ``MODEL_SQNR_ELEMENTS`` values (all of them if fewer)."""
    total = 0
    for i, out in enumerate(outputs):
        total += sum(t.numel() for t in _tensors(out))
        if total >= MODEL_SQNR_ELEMENTS:
            return i + 1
    return len(outputs)


def _run(model: nn.Module, batches: Sequence[Batch], layer: str | None) -> list[tuple[Any, Any]]:
    """(model output, output of module ``layer``) per batch."""
    captured: list[Any] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, a, o: captured.append(o)) if layer else None
    results = []
    try:
        with torch.no_grad():
            for batch in batches:
                captured.clear()
                out = call_model(model, batch)
                results.append((out, captured[-1] if captured else None))
    finally:
        if handle is not None:
            handle.remove()
    return results


def _spread(observer: Observer) -> float:
    """Full range over the central 90 % range of a histogram observer's data (1.0 when unknown)."""
    if not isinstance(observer, HistogramObserver) or not observer.has_data:
        return 1.0
    cdf = torch.cumsum(observer.histogram, 0) / observer.histogram.sum().clamp(min=1)
    edges = observer.bin_edges()
    def edge(q: float, offset: int) -> float:
        index = int(torch.searchsorted(cdf, torch.tensor(q, dtype=cdf.dtype))) + offset
        return float(edges[min(index, len(edges) - 1)])

    lo, hi = edge((1 - CORE) / 2, 0), edge((1 + CORE) / 2, 1)
    full = float(observer.max_val - observer.min_val)
    return full / max(hi - lo, full * 1e-6, 1e-12) if full > 0 else 1.0


def _weight_sqnr(layer: nn.Module, config: QuantConfig) -> float:
    w = layer.weight.detach().to(torch.float32)
    q, scale = quantize_weight(w, config.weight, axis=0)
    deq = q.to(torch.float32) * (scale.reshape(-1, *[1] * (w.dim() - 1)) if scale.dim() else scale)
    noise = float((w - deq).pow(2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float(w.pow(2).sum()) / noise)


def reason(module: nn.Module, config: QuantConfig, layer_sqnr_db: float) -> str:
    """The likely cause of a layer's quantization error, read from its calibration statistics and weights."""
    causes = []
    observers: list[tuple[str, Observer]] = []
    if isinstance(module, ObservedLayer):
        observers = [("input", module.input_observer), ("output", module.output_observer)]
    elif isinstance(module, ObservedAdd):
        observers = [("first input", module.a_observer), ("second input", module.b_observer),
                     ("output", module.output_observer)]
    for where, obs in observers:
        ratio = _spread(obs)
        if ratio >= OUTLIER_RATIO:
            causes.append(f"{where} activation outliers (range {ratio:.0f}x its central 90 %, which gets "
                          f"{255 / ratio:.1f} of 255 int8 steps)")
    if isinstance(module, ObservedLayer) and hasattr(module.layer, "weight"):
        w_db = _weight_sqnr(module.layer, config)
        if w_db < WEAK_WEIGHT_SQNR_DB:
            causes.append(f"weight range (per-channel int8 weight SQNR {w_db:.0f} dB)")
    if causes:
        return "; ".join(causes)
    return "well conditioned" if layer_sqnr_db >= 35 else "no single outlier: int8 noise accumulates in the layer"


def quantized_layer(prepared: Prepared, config: QuantConfig, name: str) -> nn.Module:
    """Layer ``name`` converted alone under ``config`` (observers read from ``prepared``, which is not modified):
    what ``convert`` would put there, without copying the whole model."""
    holder, parts = nn.Module(), name.split(".")
    parent = holder
    for part in parts[:-1]:
        parent.add_module(part, nn.Module())
        parent = parent.get_submodule(part)
    parent.add_module(parts[-1], prepared.model.get_submodule(name))
    static = {n for n in prepared.observed + prepared.adds if config.choice(n).mode == "static"}
    ranges, summary = _Ranges(prepared, config, static, prepared.model), QuantizationSummary(config.mode)
    if name in prepared.adds:  # a graph-mode add or MatMul of two activations
        convert_graph_op(holder, name, config, ranges, summary)
    else:
        _convert_layer(holder, name, config, ranges, summary, prepared.weight_params)
    return holder.get_submodule(name)


class _Cache:
    """Inputs and outputs of every layer, and the model outputs, of the fp32 reference on the sensitivity
    batches: one pass, so a layer's own error at each rung needs no further model pass."""

    def __init__(self, model: nn.Module, layers: list[str], batches: Sequence[Batch]) -> None:
        self.inputs: dict[str, list[tuple]] = {n: [] for n in layers}
        self.outputs: dict[str, list[Any]] = {n: [] for n in layers}
        handles = [model.get_submodule(n).register_forward_hook(self._hook(n)) for n in layers]
        try:
            with torch.no_grad():
                self.model_outputs = [call_model(model, b) for b in batches]
        finally:
            for h in handles:
                h.remove()


    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):  # not shape arithmetic
                self.inputs[name].append(args)
                self.outputs[name].append(output)
        return hook


def _swapped(model: nn.Module, name: str, module: nn.Module, batches: Sequence[Batch]) -> list[Any]:
    """Model outputs with ``module`` in place of layer ``name`` (put back afterwards)."""
    original = model.get_submodule(name)
    set_submodule(model, name, module)
    try:
        with torch.no_grad():
            return [call_model(model, b) for b in batches]
    finally:
        set_submodule(model, name, original)


def analyse(prepared: Prepared, config: QuantConfig, ladders: dict[str, list[Rung]],
            batches: Sequence[Batch]) -> list[LayerSensitivity]:
    """Sensitivity of every layer in ``ladders`` (every rung but fp32), worst model-output SQNR first.

    Layers (Linear/Conv) and graph-mode adds and MatMuls: one fp32 pass caches every module's inputs and output;
    each rung's quantized module runs on its cached inputs (its own SQNR), and one model pass per module, with it
    alone at its first rung, gives the model-output SQNR (over the leading batches that hold
    ``MODEL_SQNR_ELEMENTS`` output values: a transformer's first batch usually does). Other rungs' model-output
    SQNR is that value moved by their SQNR difference (noise this small propagates linearly). A module called
    other than once per batch is converted and run whole, per rung.
    """
    fp32_ref = convert_prepared(prepared, everything_float(config))
    kinds = {r.name: r.kind for r in fp32_ref.mixq_summary.layers}
    cache = _Cache(fp32_ref, list(ladders), batches)
    rows = []
    for name, rungs in ladders.items():
        row = LayerSensitivity(name, kinds.get(name, "add"), math.inf, math.inf)
        if len(cache.inputs[name]) == len(batches):  # one call per batch, cached: no extra model passes
            _layer_rows(prepared, config, fp32_ref, cache, name, rungs, row, batches)
        else:
            _whole_model_rows(prepared, config, fp32_ref, name, rungs, row, batches)
        row.reason = reason(prepared.model.get_submodule(name), config, row.layer_sqnr_db)
        rows.append(row)
    order = {n: i for i, n in enumerate(ladders)}
    return sorted(rows, key=lambda r: (r.output_sqnr_db, order[r.name]))


def _layer_rows(prepared: Prepared, config: QuantConfig, fp32_ref: nn.Module, cache: _Cache, name: str,
                rungs: list[Rung], row: LayerSensitivity, batches: Sequence[Batch]) -> None:
    first_layer_db = None
    for rung in rungs:
        if rung.mode == "fp32":
            row.rung_sqnr_db[rung.label] = math.inf
            continue
        module = quantized_layer(prepared, only(config, name, rung), name)
        layer_noise = _Noise()
        with torch.no_grad():
            for args, ref in zip(cache.inputs[name], cache.outputs[name], strict=True):
                layer_noise.add(ref, module(*args))
        if first_layer_db is None:
            model_noise, n = _Noise(), enough_batches(cache.model_outputs)
            for ref, out in zip(cache.model_outputs[:n], _swapped(fp32_ref, name, module, batches[:n]), strict=True):
                model_noise.add(ref, out)
            first_layer_db, row.layer_sqnr_db = layer_noise.db, layer_noise.db
            row.output_sqnr_db = row.rung_sqnr_db[rung.label] = model_noise.db
        elif math.isfinite(layer_noise.db) and math.isfinite(first_layer_db):
            row.rung_sqnr_db[rung.label] = row.output_sqnr_db + layer_noise.db - first_layer_db
        else:
            row.rung_sqnr_db[rung.label] = math.inf if not math.isfinite(layer_noise.db) else row.output_sqnr_db


def _whole_model_rows(prepared: Prepared, config: QuantConfig, fp32_ref: nn.Module, name: str, rungs: list[Rung],
                      row: LayerSensitivity, batches: Sequence[Batch]) -> None:
    reference = _run(fp32_ref, batches, name)
    for i, rung in enumerate(rungs):
        if rung.mode == "fp32":
            row.rung_sqnr_db[rung.label] = math.inf
            continue
        model_noise, layer_noise = _Noise(), _Noise()
        for (ref_out, ref_layer), (out, layer_out) in zip(
                reference, _run(convert_prepared(prepared, only(config, name, rung)), batches, name), strict=True):
            model_noise.add(ref_out, out)
            layer_noise.add(ref_layer, layer_out)
        row.rung_sqnr_db[rung.label] = model_noise.db
        if i == 0:
            row.output_sqnr_db, row.layer_sqnr_db = model_noise.db, layer_noise.db
