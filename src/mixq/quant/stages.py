"""The stages of post-training quantization, reusable one by one: ``prepare`` (copy, fold, plan, wrap static layers
in observers, graph mode), ``calibrate`` (run batches through the observers) and ``convert_prepared`` (in
``mixq.quant.conversion``: swap in quantized modules per layer).

``mixq.quantize`` runs the three in one pass. Tools that try many per-layer precisions (``mixq.autoquantize``)
prepare once with every layer observed, calibrate once, and convert the same ``Prepared`` model under as many
configs as they like: ``convert_prepared`` never modifies it.

Example::

    prepared = prepare(model, config, probe=batches[0])
    calibrate(prepared, batches)
    qmodel = convert_prepared(prepared)               # or convert_prepared(prepared, other_config)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from mixq.quant import adaround, bias_correction
from mixq.quant.attention_logits import checked_gains
from mixq.quant.calibration import Batch, call_checked, run_batches
from mixq.quant.capture import capture_compute, capture_root
from mixq.quant.eager_dataflow import head_dataflow
from mixq.quant.fusion import apply_fusions, calls_from_graph, find_fusions, set_submodule, trace_calls
from mixq.quant.graft import Home, copy_model, home_of
from mixq.quant.graph import apply_graph_mode, trace
from mixq.quant.graph_export import NO_NAN_GUARD, export_friendly, returns_cache
from mixq.quant.modules import ObservedLayer
from mixq.quant.modules.registry import adapt_in_place, kind_name, qmodule_class
from mixq.quant.observers import make_observer
from mixq.quant.planning import excluded, plan
from mixq.quant.root_capture import RootCapture, capture_graph, task_root
from mixq.quant.spec import DEFAULT_WEIGHT, ObserverSpec, QuantConfig, WeightMethod
from mixq.quant.summary import QuantizationSummary


@dataclass
class Prepared:
    """A model ready for calibration and conversion.

    ``model`` is a fused copy whose ``observed`` layers are wrapped in ``ObservedLayer`` (and, in graph mode, is a
    ``torch.fx.GraphModule`` with ``adds`` as ``ObservedAdd``, or ``ObservedMatMul`` for MatMuls of two
    activations when the graph came from ``torch.export``); ``plain`` layers (planned for another mode, and
    embeddings) are untouched until conversion. ``observer_specs`` records which observer each observed module's
    own observers were built with (``collect`` when one spec gathered statistics for all of them), so conversion
    can derive another observer's ranges from the same statistics instead of calibrating again. ``weight_params``
    holds the (scale, zero point) per group that a weight-only method (GPTQ, AWQ) chose for a layer, whose float
    weight it has already moved onto that grid. ``input_shapes``: the input shape each layer saw in the probe pass
    (its first call), which runtime-aware precision times its kernels at. ``rounded`` holds the int8 weight codes
    and scale ``round_weights`` (AdaRound) chose for a static layer, which conversion uses instead of rounding to
    nearest. ``logit_gains``: for each observed layer whose output reaches attention logits (a Softmax through a
    MatMul of two activations), how far one unit of error in one element of it moves a logit, in nats, measured in
    the probe pass (``mixq.quant.attention_logits``).
    """

    model: nn.Module
    config: QuantConfig
    observed: list[str]
    adds: list[str]
    plain: list[str]
    summary: QuantizationSummary
    observer_specs: dict[str, ObserverSpec] = field(default_factory=dict)
    qparams_cache: dict[tuple[str, ObserverSpec], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    weight_params: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    home: Home | None = None
    rounded: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    logit_gains: dict[str, float] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        """Every layer conversion may quantize: observed, then plain (module order within each)."""
        return self.observed + self.plain


def _observable(layer: nn.Module) -> bool:
    """Whether the layer's static module needs activation ranges (an embedding lookup does not)."""
    return getattr(qmodule_class(layer, "static"), "observed", True)


def prepare(model: nn.Module, config: QuantConfig, probe: Batch | None, *, observe_all: bool = False,
            collect: ObserverSpec | None = None) -> Prepared:
    """Copy ``model`` (never modified), fold Conv+BN(+ReLU) found in its dataflow (its ``torch.fx`` graph, else
    one ``probe`` forward pass), plan which layers to quantize and wrap the static ones in observers.

    ``observe_all`` observes every Linear/Conv layer whatever its planned mode, so any of them can be converted to
    static later; ``collect`` builds every observer from that one (histogram-based) spec, from whose statistics
    conversion can derive min-max, percentile, MSE and entropy ranges.
    """
    qmodel = copy_model(model).eval()
    home = home_of(qmodel)
    summary = QuantizationSummary(config.mode)

    def static(name: str) -> bool:
        return observe_all or config.choice(name).mode == "static"

    for name, why in capture_compute(qmodel, probe, summary.notes, config.exclude).items():
        summary.notes.append(f"{name} ({kind_name(qmodel.get_submodule(name))}) stays float: {why}")
    qmodel = capture_root(qmodel, probe, summary.notes)
    relu_layers: dict[str, float | None] = {}
    probe_outputs: list[object] = []  # kept for the graph-mode choice below (no second forward pass)
    shapes: dict[str, tuple[int, ...]] = {}
    if probe is not None and (config.fold_batchnorm or config.runtime is not None):
        # the dataflow without a forward pass where torch.fx traces the model; kernel timing needs the shapes
        calls = calls_from_graph(qmodel) if config.runtime is None else None
        if calls is None:
            calls = trace_calls(qmodel, lambda m: probe_outputs.append(call_checked(m, probe)))
        for call in calls:
            if call.shape is not None:
                shapes.setdefault(call.name, call.shape)
    if config.fold_batchnorm and probe is not None:
        fusions = [f for f in find_fusions(calls) if not excluded(f.layer, config.exclude)]
        for f in fusions:
            if not static(f.layer):
                f.relu = None  # only static layers fuse ReLU (it sets their output range)
        relu_layers = apply_fusions(qmodel, fusions)
        summary.notes += [f"folded {f.batchnorm} into {f.layer}" for f in fusions if f.batchnorm]
    # plan as static (accepts every supported layer); mode-specific limits are checked per layer at conversion
    as_static = dataclasses.replace(config, mode="static", overrides=(), method=WeightMethod(), weight=DEFAULT_WEIGHT)
    targets = plan(qmodel, as_static, summary)
    adapt_in_place(qmodel, targets)
    observed = [n for n in targets if static(n) and _observable(qmodel.get_submodule(n))]
    plain = [n for n in targets if n not in observed]
    gains = checked_gains(qmodel, probe, observed, summary.notes)[0] if probe is not None and observed else {}

    def spec_of(name: str) -> ObserverSpec:
        return collect or config.choice(name).observer

    capture: RootCapture | None = None  # graph mode through torch.export: what it captured
    export_failed = ""
    fx_why = trace(qmodel)[1] if observed and probe is not None else ""
    untraceable = bool(fx_why)
    if untraceable and returns_cache(qmodel, probe, probe_outputs[0] if probe_outputs else None):  # type: ignore
        export_failed = ("it returns a key/value cache for generation, which one captured graph cannot carry (and "
                         "integer attention would quantize the whole float cache again at every generated token, "
                         "slower than float); set model.config.use_cache = False before quantizing to get graph mode "
                         "with integer attention for whole-sequence use")
    elif untraceable:  # torch.fx cannot: try torch.export
        switches, undo = export_friendly(qmodel)
        kinds = {n: kind_name(qmodel.get_submodule(n)) for n in targets}
        capture, export_failed = _capture_graph(qmodel, targets, probe, summary.notes)  # type: ignore[arg-type]
        if capture is None:
            undo()
        else:
            qmodel = qmodel if capture.root else capture.graph
            summary.notes += [f"torch.fx could not trace the model ({fx_why}); captured {capture.describe()} with "
                              "torch.export instead", *switches]
            for name, why in capture.left_float.items():  # not called as one layer: computes as the model does
                summary.add(name, kinds[name], "float", why)
            observed = [n for n in observed if n not in capture.left_float]
            plain = [n for n in plain if n not in capture.left_float]
    specs = {}
    for name in observed:
        spec = specs[name] = spec_of(name)
        obs_in = make_observer(spec, config.activation, name=f"{name} (input)")
        obs_out = make_observer(spec, config.activation, name=f"{name} (output)")
        layer = qmodel.get_submodule(name)
        set_submodule(qmodel, name, ObservedLayer(layer, obs_in, obs_out, relu=name in relu_layers,
                                                  relu_max=relu_layers.get(name),
                                                  track_mean=bias_correction.corrects(config.bias_correction, layer),
                                                  track_gram=config.adaround and adaround.supports(layer)))
    adds: list[str] = []
    if observed:
        prefix = capture.prefix if capture else ""  # the graph's names in the model ("bert." for its base model)

        def add_observer(label: str) -> nn.Module:
            owner = prefix + label.split(" ")[0]  # "mixq_add_0 (a)" -> "mixq_add_0"
            specs[owner] = spec_of(owner)
            return make_observer(specs[owner], config.activation, name=prefix + label)

        graph, adds = apply_graph_mode(capture.graph if capture else qmodel, add_observer, summary.notes,
                                       exported=capture is not None, untraceable=fx_why,
                                       float_outputs=config.float_outputs,
                                       probe=None if probe is None else lambda m: call_checked(m, probe))
        adds = [prefix + name for name in adds]
        qmodel = capture.put_back(qmodel, graph) if capture else graph  # type: ignore[arg-type]
        if capture and capture.root:
            _head_dataflow(qmodel, [n for n in observed if not n.startswith(prefix)], probe, config, summary.notes)
        if export_failed:
            summary.notes.append(f"graph mode through torch.export not used: {export_failed}")
    if capture is None and any(config.choice(n).mode != "static" for n in plain):  # dynamic, weight-only, fp16
        summary.notes += export_friendly(qmodel, NO_NAN_GUARD)[0]  # on the copy, kept: the file runs what it runs
    return Prepared(qmodel, config, observed, adds, plain, summary, {n: specs[n] for n in observed + adds},
                    input_shapes={n: shapes[n] for n in targets if n in shapes},
                    home=home if isinstance(qmodel, fx.GraphModule) else None, logit_gains=gains)


def _capture_graph(model: nn.Module, targets: list[str], probe: Batch, notes: list[str]
                   ) -> tuple[RootCapture | None, str]:
    """Graph mode's ``torch.export`` capture (``mixq.quant.root_capture``): a Hugging Face task model's base
    model, so its head and loss stay the model's Python (``labels`` work), else the whole model; where the base
    model cannot be captured alone, the whole model is tried too, as before base models were captured."""
    root = task_root(model)
    capture, why = capture_graph(model, root, targets, probe)
    if capture is not None or not root:
        return capture, why
    capture, whole_why = capture_graph(model, "", targets, probe)
    if capture is None:
        return None, f"{why} ({root}); {whole_why} (the whole model)"
    notes.append(f"{root} could not be captured alone ({why}), so the whole model was: its head is part of the "
                 "graph and calls take only the inputs of the calibration batches")
    return capture, ""


def _head_dataflow(model: nn.Module, head: list[str], probe: Batch, config: QuantConfig, notes: list[str]) -> None:
    """The observed layers of a task model's head, outside its captured base model, as graph mode treats them:
    a Linear output no observed module reads stays float (``config.float_outputs``), an input that is another
    observed layer's output shares its scale (``mixq.quant.eager_dataflow.head_dataflow``)."""
    if not head:
        return
    shared, floats = head_dataflow(model, lambda m: call_checked(m, probe), head, config.float_outputs)
    notes.append(f"the task head ({', '.join(head)}) runs as the model's own Python: {len(floats)} Linear outputs "
                 f"stay float (no integer kernel reads them), {shared} inputs share their producer's scale")


def calibrate(prepared: Prepared, batches: Iterable[Batch], *, progress: bool = True,
              max_batches: int | None = None) -> int:
    """Run calibration batches through the prepared model's observers; returns how many batches ran."""
    prepared.qparams_cache.clear()  # ranges derived from earlier statistics are stale now
    return run_batches(prepared.model, batches, progress=progress, max_batches=max_batches)


def round_weights(prepared: Prepared, *, progress: bool = True,
                  settings: adaround.AdaRoundSettings = adaround.DEFAULT_SETTINGS) -> int:
    """AdaRound every calibrated static layer whose input Gram matrix calibration gathered (``config.adaround``;
    not layers whose input SmoothQuant scales): their codes go to ``prepared.rounded`` and the Gram matrix is
    freed. Returns how many layers were rounded."""
    todo = [(n, m) for n in prepared.observed if isinstance(m := prepared.model.get_submodule(n), ObservedLayer)
            and m.input_gram() is not None]
    for name, observed in tqdm(todo, desc="adaround layers", disable=not progress, leave=False):
        prepared.rounded[name] = adaround.adaround_codes(observed.layer.weight, observed.input_gram(),
                                                         prepared.config.weight, settings)
        observed.gram = None
    return len(todo)
