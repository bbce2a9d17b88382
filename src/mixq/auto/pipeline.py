"""``mixq.autoquantize`` as a pipeline of named phases, each a function with a typed (frozen) result.

``calibrate`` (one pass gathers every statistic) -> ``mixq.auto.sensitivity.analyse`` (per-layer, per-rung SQNR)
-> ``check_all_int8`` -> ``probe_latency`` (where to start: int8, or fp32 where int8 is slower) -> ``search`` (the
greedy climb) -> ``choose`` (the chosen model, QAT as the last resort) -> ``measure`` (fp32 vs
mixq dynamic vs all-int8 vs chosen on ONNX Runtime at each deploy shape, with the latency objective's final checks)
-> ``conclude`` (the verdict, a warning on a miss). The phases after calibration share one ``Context``: the model,
the base config, the options, the evaluator, the target, the calibration and the report they fill in.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from mixq.auto import qat_fallback
from mixq.auto.evaluation import BudgetExhausted, Evaluator
from mixq.auto.ladder import Rung, build_config, everything_float, ladder, only
from mixq.auto.latency import PAIRS, Comparison, layer_inputs, signature
from mixq.auto.measure import Measurement, Meters, mean_ratio
from mixq.auto.report import AutoQuantReport, ComparedModel, Step
from mixq.auto.search import GreedySearch, Outcome
from mixq.auto.sensitivity import quantized_layer
from mixq.quant.api import quantize
from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.graft import copy_model
from mixq.quant.modules import ObservedMatMul
from mixq.quant.spec import ObserverSpec, QuantConfig
from mixq.quant.stages import Prepared, prepare
from mixq.quant.stages import calibrate as calibrate_prepared

Assignment = dict[str, int]  # layer name -> index of its rung on its ladder


@dataclass(frozen=True)
class Options:
    """The search options ``autoquantize`` was called with (validated there)."""

    objective: str
    max_evals: int
    sensitivity_evals: int
    sensitivity_batches: int
    min_gain_db: float
    progress: bool


@dataclass(frozen=True)
class Target:
    """The fp32 baseline and the lowest metric that meets the target (``baseline - max_drop``, or relative)."""

    baseline: float
    required: float

    @classmethod
    def of(cls, baseline: float, max_drop: float, relative: bool) -> Target:
        return cls(baseline, baseline - (max_drop * abs(baseline) if relative else max_drop))

    def meets(self, metric: float) -> bool:
        return metric >= self.required

    @property
    def allowed(self) -> float:
        """The drop the target allows."""
        return self.baseline - self.required


@dataclass(frozen=True)
class Calibration:
    """Phase ``calibrate``: the calibrated model (every statistic gathered once), each layer's ladder and the batches
    kept for the sensitivity analysis."""

    prepared: Prepared
    ladders: dict[str, list[Rung]]
    kept: list[Batch]

    @property
    def all_int8(self) -> Assignment:
        return {n: 0 for n in self.ladders}

    @property
    def fp32(self) -> Assignment:
        return {n: len(r) - 1 for n, r in self.ladders.items()}


@dataclass(frozen=True)
class Start:
    """Phase ``probe_latency``: where the search starts, and the layers it starts fp32 because int8 is slower."""

    assignment: Assignment
    slower: frozenset[str] = frozenset()

    def kept_fp32(self, assignment: Assignment) -> list[str]:
        """The layers of ``assignment`` still fp32 because of the latency probe (module order)."""
        return [n for n, i in assignment.items() if n in self.slower and i == self.assignment[n]]


@dataclass(frozen=True)
class Choice:
    """Phases ``choose`` and ``measure``: the model returned, the config that rebuilds it (None when it is float or
    came from QAT), its metric and, for a post-training choice, its assignment."""

    model: nn.Module
    config: QuantConfig | None
    metric: float
    assignment: Assignment | None = None


@dataclass
class Context:
    """What the phases after calibration share; ``report`` is filled in as they go."""

    model: nn.Module
    base: QuantConfig
    options: Options
    evaluate: Evaluator
    target: Target
    example: Batch
    calibration: Calibration
    report: AutoQuantReport

    @property
    def ladders(self) -> dict[str, list[Rung]]:
        return self.calibration.ladders

    def convert(self, assignment: Assignment) -> nn.Module:
        return convert_prepared(self.calibration.prepared, build_config(self.base, self.ladders, assignment))

    def labels(self, assignment: Assignment) -> dict[str, str]:
        return {n: self.ladders[n][i].label for n, i in assignment.items()}

    def record(self, action: str, metric: float) -> None:
        steps = self.report.steps
        steps.append(Step(len(steps), action, metric, self.target.meets(metric), self.evaluate.calls))

    def run(self, assignment: Assignment, action: str) -> float:
        """Evaluate ``assignment`` (float everywhere is the baseline, not evaluated again) and record the step."""
        if assignment == self.calibration.fp32:
            metric = self.target.baseline
        else:
            metric = self.evaluate(self.convert(assignment), action)
        self.record(action, metric)
        return metric


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Adds the wall time of the block to ``seconds[phase]``."""
    tick = time.perf_counter()
    yield
    seconds[phase] = time.perf_counter() - tick


def _keep(batches: Iterable[Batch], kept: list[Batch], n: int) -> Iterator[Batch]:
    for batch in batches:
        if len(kept) < n:
            kept.append(batch)
        yield batch


def calibrate(model: nn.Module, base: QuantConfig, options: Options, probe: Batch,
              batches: Iterable[Batch]) -> Calibration:
    """Phase 1: one calibration pass that gathers histograms for every layer (every observer on the ladders is
    derived from them), keeping the first ``sensitivity_batches`` batches; each layer's ladder."""
    kept: list[Batch] = []
    prepared = prepare(model, base, probe, observe_all=True, collect=ObserverSpec("mse", bins=base.observer.bins))
    calibrate_prepared(prepared, _keep(batches, kept, options.sensitivity_batches), progress=options.progress)
    kinds = {name: type(prepared.model.get_submodule(name).layer).__name__ for name in prepared.observed}
    kinds |= {name: "matmul" if isinstance(prepared.model.get_submodule(name), ObservedMatMul) else "add"
              for name in prepared.adds}
    from mixq.export.backend import get_runtime

    floats = get_runtime("ort").float_dtypes  # the runtime the latency probe and measurements time on
    ladders = {n: ladder(kinds[n], options.objective, base.observer, floats)
               for n in prepared.observed + prepared.adds}
    return Calibration(prepared, ladders, kept)


def check_all_int8(ctx: Context) -> float:
    """Phase 3: the metric with every layer static int8 (the first search step)."""
    metric = ctx.run(ctx.calibration.all_int8, "all layers static int8")
    if not ctx.ladders:
        ctx.report.notes.append("no Linear/Conv layers to quantize: the model stays float")
    return metric


CompareLayer = Callable[..., Comparison]


def slower_over_shapes(verdicts: list[Comparison]) -> bool:
    """Whether ``b`` is slower than ``a`` over the deploy shapes: significantly slower at one shape at least
    (``Comparison.a_faster``) and slower on the mean of the per-shape time ratios ``b/a`` (the cost of a model
    deployed at all of them, each shape weighted alike; a max would let one shape's small loss veto a large gain at
    the others). At one shape this is ``a_faster``."""
    return (any(v.a_faster for v in verdicts)
            and mean_ratio([v.b_ms for v in verdicts], [v.a_ms for v in verdicts]) > 1)


def _at(shape: str, meters: Meters) -> str:
    return f" at {shape}" if len(meters.labels) > 1 else ""


def probe_latency(ctx: Context, meters: Meters | None, compare_layer: CompareLayer) -> Start:
    """Phase 4 (``objective="latency"``, timed on ``meters``, one per deploy shape): layers whose int8 kernel is
    slower than float over the deploy shapes (``slower_over_shapes``), timed alone at the shapes each deploy example
    gives them (one paired comparison per distinct shape, see ``mixq.auto.latency``), start fp32; ties stay int8.
    Other objectives start all int8. Whether the whole model stays float is decided on the chosen model
    (``measure``)."""
    if meters is None or ctx.options.objective != "latency" or not ctx.ladders:
        return Start(ctx.calibration.all_int8)
    per_layer, verdicts = _time_layers(ctx, meters, compare_layer)
    start, slower = ctx.calibration.all_int8, set()
    for name, by_shape in per_layer.items():
        ctx.report.layer_latency_ms[name] = next(iter(by_shape.values())).b_ms  # the first deploy shape's
        if slower_over_shapes(list(by_shape.values())):
            start[name] = len(ctx.ladders[name]) - 1
            slower.add(name)
            ctx.report.notes.append(_slower_note(name, by_shape, meters))
    ctx.report.notes.append(_probe_summary(verdicts, meters.labels, meters.runtime.title))
    return Start(start, frozenset(slower))


def _time_layers(ctx: Context, meters: Meters,
                 compare_layer: CompareLayer) -> tuple[dict[str, dict[str, Comparison]], list[Comparison]]:
    """Each ladder layer alone, int8 vs fp32, at the inputs each deploy shape gives it: layer -> shape -> verdict
    (layers of one signature share one comparison), and the distinct comparisons made."""
    prepared = ctx.calibration.prepared
    fp32_ref = convert_prepared(prepared, everything_float(ctx.base))
    layers = [n for n in ctx.ladders if n in prepared.observed or n in prepared.plain]
    verdicts: dict[tuple, Comparison] = {}
    per_layer: dict[str, dict[str, Comparison]] = {}
    for shape, example in meters.examples.items():
        meter = meters.meters[shape]
        inputs = layer_inputs(fp32_ref, layers, example)
        for name in (n for n in layers if n in inputs):
            float_layer = fp32_ref.get_submodule(name)
            key = signature(float_layer, inputs[name])
            if key not in verdicts:
                int8_layer = quantized_layer(prepared, only(ctx.base, name, ctx.ladders[name][0]), name)
                verdicts[key] = compare_layer(float_layer, int8_layer, inputs[name], meter.folder,
                                              str(len(verdicts)), meter.threads, meter.runtime.label)
            per_layer.setdefault(name, {})[shape] = verdicts[key]
    ordered = {n: per_layer[n] for n in layers if n in per_layer}
    return ordered, list(verdicts.values())


def _slower_note(name: str, by_shape: dict[str, Comparison], meters: Meters) -> str:
    timings = "; ".join(f"{v.b_ms:.3f} ms int8 vs {v.a_ms:.3f} ms fp32{_at(s, meters)}" for s, v in by_shape.items())
    rounds = ", ".join(f"{v.pairs - v.b_wins} of {v.pairs}" for v in by_shape.values())
    return (f"{name}: int8 is not faster here ({timings} for the layer alone, won {rounds} paired rounds); "
            "it starts fp32")


def _probe_summary(verdicts: list[Comparison], shapes: list[str], runtime: str) -> str:
    faster = sum(v.b_faster for v in verdicts)
    slower = sum(v.a_faster for v in verdicts)
    over = f" (deploy shapes {', '.join(shapes)})" if len(shapes) > 1 else ""
    return (f"latency probe: {len(verdicts)} distinct layer shapes{over} timed alone on {runtime} in {PAIRS} "
            f"paired rounds: int8 significantly faster for {faster}, slower for {slower}, a tie (kept int8) for "
            f"{len(verdicts) - faster - slower}")


def rank_by_eval(ctx: Context) -> None:
    """``eval_fn`` drop with each of the worst layers alone in int8 (at most ``sensitivity_evals`` of them, within
    budget); re-ranks those layers by it."""
    report = ctx.report
    count = min(ctx.options.sensitivity_evals, ctx.evaluate.left - 1, len(report.sensitivity))
    for row in report.sensitivity[:count]:
        model = convert_prepared(ctx.calibration.prepared, only(ctx.base, row.name, ctx.ladders[row.name][0]))
        row.eval_drop = ctx.target.baseline - ctx.evaluate(model, f"{row.name} alone int8")
    head = sorted(report.sensitivity[:count], key=lambda r: -(r.eval_drop or 0.0))
    report.sensitivity = head + report.sensitivity[count:]


def search(ctx: Context, start: Start, int8_metric: float, reserve: int) -> Outcome:
    """Phase 5: the greedy climb from ``start`` (``mixq.auto.search``), keeping ``reserve`` evaluations back (for
    QAT); when all-int8 misses, the worst layers' ``eval_fn`` drops are measured first (``rank_by_eval``)."""
    calibration, evaluate = ctx.calibration, ctx.evaluate
    evaluate.max_evals -= reserve
    try:
        if not ctx.target.meets(int8_metric) and start.assignment != calibration.fp32 and evaluate.left > 1:
            rank_by_eval(ctx)
        harmless = frozenset(r.name for r in ctx.report.sensitivity
                             if r.eval_drop is not None and r.eval_drop <= ctx.target.allowed / 4)
        greedy = GreedySearch(ctx.ladders, ctx.report.sensitivity, ctx.options.objective, ctx.options.min_gain_db,
                              harmless)
        try:
            start_metric = int8_metric
            if start.assignment != calibration.all_int8:
                everything_fp32 = start.assignment == calibration.fp32
                label = "fp32 everywhere" if everything_fp32 else "int8 where it is faster, fp32 elsewhere"
                start_metric = ctx.run(start.assignment, label)
            return greedy.run(start.assignment, start_metric, ctx.target.meets, ctx.run)
        except BudgetExhausted:  # not even the latency-driven start could be evaluated: all-int8 is what we know
            return Outcome(calibration.all_int8, int8_metric)
    finally:
        evaluate.max_evals += reserve


def choose(ctx: Context, outcome: Outcome, int8_metric: float,
           train_fn: Callable[[nn.Module], Any] | None) -> Choice:
    """Phase 6: the model the search chose (the fp32 model when it chose float everywhere); with ``train_fn``, QAT
    fine-tuning when that misses the target, kept if it scores higher. Sets the report's precisions and metrics."""
    if outcome.assignment != ctx.calibration.fp32:
        model = ctx.convert(outcome.assignment)
        choice = Choice(model, model.mixq_config, outcome.metric, outcome.assignment)
    else:
        choice = Choice(copy_model(ctx.model).eval(), None, outcome.metric, outcome.assignment)
    ctx.report.precisions = ctx.labels(outcome.assignment)
    if not ctx.target.meets(choice.metric) and train_fn is not None:
        qat = qat_fallback.try_qat(ctx.model, train_fn, ctx.example, ctx.evaluate, ctx.report.notes)
        if qat is not None:
            ctx.record("QAT fine-tuning with train_fn (all int8)", qat[1])
            if qat[1] > choice.metric:
                choice = Choice(qat[0], None, qat[1])
                ctx.report.precisions = {n: "int8 (QAT)" for n in ctx.ladders}
    ctx.report.variants = [ComparedModel("fp32", ctx.target.baseline), ComparedModel("all-int8", int8_metric),
                           ComparedModel("chosen", choice.metric)]
    return choice


def measure(ctx: Context, meters: Meters | None, choice: Choice, kept_fp32: list[str]) -> Choice:
    """Phase 7: fp32 vs mixq dynamic vs all-int8 vs chosen timed on ``meters`` at each deploy shape (skipped without
    them); with the latency objective the chosen model must beat fp32 (``_compare_variants``) and all-int8
    (``_final_check``) over the deploy shapes."""
    if meters is None:
        return choice
    with meters:
        choice = _compare_variants(ctx, meters, choice)
        if ctx.options.objective == "latency" and choice.config is not None:
            choice = _final_check(ctx, meters, choice, kept_fp32) or choice
    return choice


VARIANTS = ("fp32", "dynamic", "all-int8", "chosen")


def _compared(name: str, metric: float | None, times: dict[str, Measurement]) -> ComparedModel:
    first = next(iter(times.values()))
    return ComparedModel(name, metric, first.latency_ms, first.size_bytes,
                         {shape: m.latency_ms for shape, m in times.items()})


def _compare_variants(ctx: Context, meters: Meters, choice: Choice) -> Choice:
    """fp32 vs mixq dynamic (``mixq.quantize(model, "dynamic", runtime="ort")``: no dynamic layer slower than float;
    not evaluated: its metric is None) vs all-int8 vs
    chosen on ONNX Runtime at each deploy shape (fills ``report.variants``); with the latency objective, a chosen
    model that is not faster than fp32 on the mean of the per-shape time ratios gives way to the fp32 model."""
    report = ctx.report
    all_int8 = ctx.convert(ctx.calibration.all_int8)
    dynamic = quantize(ctx.model, "dynamic", example_inputs=ctx.example, progress=False, runtime="ort")
    times = meters.measure({"fp32": ctx.model, "dynamic": dynamic, "all-int8": all_int8, "chosen": choice.model})
    metrics: dict[str, float | None] = {v.name: v.metric for v in report.variants}
    metrics["dynamic"] = None
    shapes = meters.labels
    ratio = mean_ratio([times["chosen"][s].latency_ms for s in shapes], [times["fp32"][s].latency_ms for s in shapes])
    if report.objective == "latency" and choice.config is not None and ratio >= 1:
        timings = "; ".join(f"chosen {times['chosen'][s].latency_ms:.3f} ms vs fp32 {times['fp32'][s].latency_ms:.3f} "
                            f"ms{_at(s, meters)}" for s in shapes)
        mean = f", mean time ratio {ratio:.2f}" if len(shapes) > 1 else ""
        report.notes.append(f"int8 does not make this model faster on {meters.runtime.title} here "
                            f"({timings}{mean}): the whole model stays float")
        choice = Choice(copy_model(ctx.model).eval(), None, report.baseline)
        metrics["chosen"] = report.baseline
        report.precisions = {n: "fp32" for n in ctx.ladders}
        times["chosen"] = times["fp32"]
    report.variants = [_compared(name, metrics[name], times[name]) for name in VARIANTS]
    return choice


def _final_check(ctx: Context, meters: Meters, choice: Choice, kept_fp32: list[str]) -> Choice | None:
    """The chosen model must be at least as fast as all-int8 (paired timing at each deploy shape); if all-int8 is
    faster over the deploy shapes (``slower_over_shapes``), the layers kept fp32 for latency go back to int8 when
    the metric still meets the target."""
    report = ctx.report
    verdicts = meters.compare("all-int8", "chosen")
    for shape, verdict in verdicts.items():
        report.notes.append(f"final check: chosen {verdict.b_ms:.3f} ms vs all-int8 {verdict.a_ms:.3f} ms on "
                            f"{meters.runtime.title}{_at(shape, meters)} ({verdict.pairs} paired rounds, chosen "
                            f"faster in {verdict.b_wins})")
    if (not slower_over_shapes(list(verdicts.values())) or not kept_fp32 or ctx.evaluate.left < 1
            or choice.assignment is None):
        return None
    action = "layers kept fp32 for latency back to int8"
    candidate = ctx.convert({**choice.assignment, **{n: 0 for n in kept_fp32}})
    metric = ctx.evaluate(candidate, action)
    ctx.record(action, metric)
    if not ctx.target.meets(metric):
        return None
    report.precisions.update({n: ctx.ladders[n][0].label for n in kept_fp32})
    times = meters.measure({"chosen, int8 kept": candidate})["chosen, int8 kept"]
    report.variants = [v if v.name != "chosen" else _compared("chosen", metric, times) for v in report.variants]
    report.notes.append(f"all-int8 was faster than the chosen model: {len(kept_fp32)} layers kept fp32 for "
                        "latency are int8 again (the metric still meets the target)")
    return Choice(candidate, candidate.mixq_config, metric, {**choice.assignment, **{n: 0 for n in kept_fp32}})


def conclude(ctx: Context, choice: Choice) -> None:
    """Phase 8: whether ``choice`` meets the target, by how much it misses and the evaluations spent, in the report;
    a warning (attributed to ``autoquantize``'s caller) when it misses."""
    report, target, evaluate = ctx.report, ctx.target, ctx.evaluate
    report.met, report.evaluations = target.meets(choice.metric), evaluate.calls
    report.miss = 0.0 if report.met else target.required - choice.metric
    if not report.met:
        warnings.warn(f"autoquantize: no configuration met the target within {evaluate.calls} evaluations "
                      f"(max_evals={ctx.options.max_evals}); the best found scores {choice.metric:.4g}, "
                      f"{report.miss:.4g} below the required {target.required:.4g} (fp32 {target.baseline:.4g}). "
                      "Returning it; raise max_evals or max_drop", stacklevel=3)
