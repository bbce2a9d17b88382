"""``mixq.autoquantize``: per-layer precisions chosen against the user's metric, with the evidence.

Cost, for ``L`` candidate layers (Linear/Conv and graph-mode adds), ``R`` rungs per ladder (at most 6) and ``S``
sensitivity batches: one calibration pass (whatever ``L``); ``L x R`` single-layer conversions, each run on ``S``
batches (no ``eval_fn`` calls); ``eval_fn`` calls: the fp32 baseline, the all-int8 check, up to
``sensitivity_evals`` single-layer checks and one per search step, never more than ``max_evals`` in all; with
``objective="latency"`` ``L + 3`` ONNX exports and ONNX Runtime timings, otherwise 3 (fp32, all-int8, chosen, for
the report; ``measure=False`` skips them). Each search step moves one layer up one useful rung, so a search that
must move ``k`` layers costs at most ``k x R`` evaluations and usually about ``k``.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from mixq.auto import qat_fallback
from mixq.auto.evaluation import BudgetExhausted, Evaluator
from mixq.auto.ladder import Rung, build_config, everything_float, ladder, only
from mixq.auto.latency import PAIRS, Comparison, compare_layer, layer_inputs, signature
from mixq.auto.measure import OrtMeter
from mixq.auto.report import AutoQuantReport, Step, Variant
from mixq.auto.search import GreedySearch, Outcome
from mixq.auto.sensitivity import analyse, quantized_layer
from mixq.quant.api import make_config
from mixq.quant.calibration import Batch
from mixq.quant.conversion import convert_prepared
from mixq.quant.finiteness import check_finite
from mixq.quant.modules import ObservedMatMul
from mixq.quant.planning import split_first
from mixq.quant.spec import ObserverSpec, QuantConfig
from mixq.quant.stages import calibrate, prepare

OBJECTIVES = ("latency", "size", "accuracy")


@dataclass
class AutoQuantResult:
    """``model``: the chosen model (export it with ``mixq.export_onnx``); ``config``: the ``QuantConfig`` (with
    per-layer overrides) that ``mixq.quantize`` turns into the same model, None when the model stays float or came
    from QAT; ``report``: the evidence (``AutoQuantReport``)."""

    model: nn.Module
    config: QuantConfig | None
    report: AutoQuantReport


def _check(model: nn.Module, max_drop: float, objective: str, max_evals: int, sensitivity_batches: int,
           config: QuantConfig) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(max_drop, bool) or not isinstance(max_drop, numbers.Real) or not math.isfinite(max_drop):
        raise TypeError(f"max_drop must be a finite number, got {max_drop!r}")
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 (the largest acceptable fall of eval_fn below fp32), got {max_drop}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if max_evals < 2:
        raise ValueError(f"max_evals must be >= 2 (the fp32 baseline and the all-int8 check), got {max_evals}")
    if sensitivity_batches < 1:
        raise ValueError(f"sensitivity_batches must be >= 1, got {sensitivity_batches}")
    if config.mode != "static" or config.overrides:
        raise ValueError("config must be a static config without overrides (autoquantize chooses the per-layer "
                         "precisions); keep layers float with exclude=[...]")
    if config.observer.name == "moving_average":
        raise ValueError("autoquantize gathers histogram statistics once; use the minmax, percentile, mse or "
                         "entropy observer")


def _keep(batches: Iterable[Batch], kept: list[Batch], n: int) -> Iterator[Batch]:
    for batch in batches:
        if len(kept) < n:
            kept.append(batch)
        yield batch


def autoquantize(
    model: nn.Module,
    calib_data: Iterable[Batch],
    eval_fn: Callable[[nn.Module], float],
    *,
    max_drop: float = 0.01,
    relative: bool = False,
    example_inputs: Batch | None = None,
    objective: str = "latency",
    max_evals: int = 16,
    sensitivity_evals: int = 3,
    sensitivity_batches: int = 2,
    min_gain_db: float = 1.0,
    config: QuantConfig | None = None,
    train_fn: Callable[[nn.Module], Any] | None = None,
    measure: bool = True,
    progress: bool = False,
) -> AutoQuantResult:
    """Quantize ``model`` as far as ``eval_fn`` allows, choosing a precision per layer; ``model`` is not modified.

    ``eval_fn(model) -> float`` is your metric, higher is better; it runs on the fp32 model once (the baseline).
    The target is ``eval_fn >= baseline - max_drop`` (absolute, in the metric's units), or with ``relative=True``
    ``baseline - max_drop * |baseline|`` (``max_drop=0.01``: within 1 %). Calibration statistics are gathered once
    from ``calib_data``; every layer's sensitivity is measured from them; the search starts from static int8
    everywhere and moves the most sensitive layers up (percentile/MSE observers, dynamic, fp16, fp32) until the
    target is met, calling ``eval_fn`` at most ``max_evals`` times in all (see the module docstring for costs).
    ``objective``: ``"latency"`` times candidates on ONNX Runtime here and keeps float what int8 does not speed up;
    ``"size"`` climbs the ladder in order of file size; ``"accuracy"`` moves each layer straight to its most
    accurate rung. ``example_inputs`` (default: the first calibration batch) is what is exported and timed.
    If nothing meets the target within budget, the best model found is returned with a warning saying by how much
    it misses. With ``train_fn`` and ``mixq.prepare_qat`` available, QAT fine-tuning is the last resort.

    Example::

        result = mixq.autoquantize(model, batches, lambda m: accuracy(m, x_val, y_val), max_drop=0.01)
        print(result.report); mixq.export_onnx(result.model, x[:1], "model.onnx")
    """
    start_time = time.perf_counter()
    base = config or make_config("static")
    _check(model, max_drop, objective, max_evals, sensitivity_batches, base)
    check_finite(model, "autoquantize")
    evaluate = Evaluator(eval_fn, max_evals)
    probe, batches = split_first(calib_data)
    example = probe if example_inputs is None else example_inputs
    seconds: dict[str, float] = {}

    baseline = evaluate(model, "fp32")
    required = baseline - (max_drop * abs(baseline) if relative else max_drop)

    def meets(metric: float) -> bool:
        return metric >= required

    tick = time.perf_counter()
    kept: list[Batch] = []
    prepared = prepare(model, base, probe, observe_all=True, collect=ObserverSpec("mse", bins=base.observer.bins))
    calibrate(prepared, _keep(batches, kept, sensitivity_batches), progress=progress)
    seconds["calibration"] = time.perf_counter() - tick
    kinds = {name: type(prepared.model.get_submodule(name).layer).__name__ for name in prepared.observed}
    kinds |= {name: "matmul" if isinstance(prepared.model.get_submodule(name), ObservedMatMul) else "add"
              for name in prepared.adds}
    ladders = {n: ladder(kinds[n], objective, base.observer) for n in prepared.observed + prepared.adds}

    tick = time.perf_counter()
    sensitivity = analyse(prepared, base, ladders, kept)
    seconds["sensitivity"] = time.perf_counter() - tick
    steps: list[Step] = []
    notes: list[str] = []
    fp32_assignment = {n: len(r) - 1 for n, r in ladders.items()}

    def run(assignment: dict[str, int], action: str) -> float:
        if assignment == fp32_assignment:  # float everywhere: that is the baseline, no need to evaluate it again
            metric = baseline
        else:
            metric = evaluate(convert_prepared(prepared, build_config(base, ladders, assignment)), action)
        steps.append(Step(len(steps), action, metric, meets(metric), evaluate.calls))
        return metric

    all_int8 = {n: 0 for n in ladders}
    int8_metric = run(all_int8, "all layers static int8")
    report = AutoQuantReport(objective, float(max_drop), relative, baseline, required, False, 0.0, 0, max_evals,
                             sensitivity, steps, notes=notes, seconds=seconds)
    if not ladders:
        notes.append("no Linear/Conv layers to quantize: the model stays float")
    meter = OrtMeter(example) if (measure or objective != "accuracy") else None
    tick = time.perf_counter()
    start = dict(all_int8)
    if meter is not None and objective == "latency" and ladders:
        start = _latency_start(meter, prepared, base, ladders, all_int8, report, example)
    seconds["latency_probe"] = time.perf_counter() - tick

    tick = time.perf_counter()
    reserve = 1 if train_fn is not None else 0  # keep one evaluation for QAT, the last resort
    evaluate.max_evals -= reserve
    if not meets(int8_metric) and start != fp32_assignment and evaluate.left > 1:
        _eval_sensitivity(prepared, base, ladders, report, evaluate, baseline, sensitivity_evals)
    allowed = baseline - required
    harmless = frozenset(r.name for r in sensitivity if r.eval_drop is not None and r.eval_drop <= allowed / 4)
    search = GreedySearch(ladders, report.sensitivity, objective, min_gain_db, harmless)
    try:
        label = "fp32 everywhere" if start == fp32_assignment else "int8 where it is faster, fp32 elsewhere"
        start_metric = int8_metric if start == all_int8 else run(start, label)
        outcome = search.run(start, start_metric, meets, run)
    except BudgetExhausted:  # not even the latency-driven start could be evaluated: all-int8 is what we know
        outcome = Outcome(all_int8, int8_metric, meets(int8_metric), True)
    evaluate.max_evals += reserve
    seconds["search"] = time.perf_counter() - tick
    chosen: nn.Module = copy.deepcopy(model).eval()
    chosen_config: QuantConfig | None = None
    if outcome.assignment != fp32_assignment:
        chosen = convert_prepared(prepared, build_config(base, ladders, outcome.assignment))
        chosen_config = chosen.mixq_config
    report.precisions = {n: ladders[n][i].label for n, i in outcome.assignment.items()}
    metric = outcome.metric
    if not meets(metric) and train_fn is not None:
        qat = qat_fallback.try_qat(model, train_fn, example, evaluate, notes)
        if qat is not None:
            steps.append(Step(len(steps), "QAT fine-tuning with train_fn (all int8)", qat[1], meets(qat[1]),
                              evaluate.calls))
            if qat[1] > metric:
                chosen, chosen_config, metric = qat[0], None, qat[1]
                report.precisions = {n: "int8 (QAT)" for n in ladders}
    tick = time.perf_counter()
    report.variants = [Variant("fp32", baseline), Variant("all-int8", int8_metric), Variant("chosen", metric)]
    if meter is not None:
        with meter:
            chosen, chosen_config, metric = _measure_variants(meter, model, prepared, base, ladders, chosen,
                                                              chosen_config, report)
            if objective == "latency" and chosen_config is not None:
                latency_fp32 = [n for n, i in outcome.assignment.items() if start[n] != 0 and i == start[n]]
                better = _final_check(meter, prepared, base, ladders, outcome.assignment, latency_fp32, report,
                                      evaluate, meets)
                if better is not None:
                    chosen, chosen_config, metric = better
    seconds["measure"] = time.perf_counter() - tick
    report.met, report.evaluations = meets(metric), evaluate.calls
    report.miss = 0.0 if report.met else required - metric
    if not report.met:
        warnings.warn(f"autoquantize: no configuration met the target within {evaluate.calls} evaluations "
                      f"(max_evals={max_evals}); the best found scores {metric:.4g}, {report.miss:.4g} below the "
                      f"required {required:.4g} (fp32 {baseline:.4g}). Returning it; raise max_evals or max_drop",
                      stacklevel=2)
    seconds["total"] = time.perf_counter() - start_time
    return AutoQuantResult(chosen, chosen_config, report)


def _eval_sensitivity(prepared: Any, base: QuantConfig, ladders: dict[str, list[Rung]], report: AutoQuantReport,
                      evaluate: Evaluator, baseline: float, budget: int) -> None:
    """``eval_fn`` drop with each of the worst layers alone in int8; re-ranks those layers by it."""
    count = min(budget, evaluate.left - 1, len(report.sensitivity))
    for row in report.sensitivity[:count]:
        model = convert_prepared(prepared, only(base, row.name, ladders[row.name][0]))
        row.eval_drop = baseline - evaluate(model, f"{row.name} alone int8")
    head = sorted(report.sensitivity[:count], key=lambda r: -(r.eval_drop or 0.0))
    report.sensitivity = head + report.sensitivity[count:]


def _latency_start(meter: OrtMeter, prepared: Any, base: QuantConfig, ladders: dict[str, list[Rung]],
                   all_int8: dict[str, int], report: AutoQuantReport, example: Any) -> dict[str, int]:
    """Layers whose int8 kernel is significantly slower than float, timed alone at the shapes ``example`` gives
    them (one paired comparison per distinct shape, see ``mixq.auto.latency``), start fp32; ties stay int8.
    Whether the whole model stays float is decided on the chosen model (``_measure_variants``)."""
    fp32_ref = convert_prepared(prepared, everything_float(base))
    layers = [n for n in ladders if n in prepared.observed or n in prepared.plain]
    inputs = layer_inputs(fp32_ref, layers, example)
    verdicts: dict[tuple, Comparison] = {}
    start = dict(all_int8)
    for name in layers:
        if name not in inputs:
            continue
        float_layer = fp32_ref.get_submodule(name)
        key = signature(float_layer, inputs[name])
        if key not in verdicts:
            int8_layer = quantized_layer(prepared, only(base, name, ladders[name][0]), name)
            verdicts[key] = compare_layer(float_layer, int8_layer, inputs[name], meter.folder, str(len(verdicts)),
                                          meter.threads)
        verdict = verdicts[key]
        report.layer_latency_ms[name] = verdict.b_ms
        if verdict.a_faster:
            start[name] = len(ladders[name]) - 1
            report.notes.append(f"{name}: int8 is not faster here ({verdict.b_ms:.3f} ms int8 vs {verdict.a_ms:.3f} "
                                f"ms fp32 for the layer alone, won {verdict.pairs - verdict.b_wins} of "
                                f"{verdict.pairs} paired rounds); it starts fp32")
    faster = sum(v.b_faster for v in verdicts.values())
    slower = sum(v.a_faster for v in verdicts.values())
    report.notes.append(f"latency probe: {len(verdicts)} distinct layer shapes timed alone on ONNX Runtime in "
                        f"{PAIRS} paired rounds: int8 significantly faster for {faster}, slower for {slower}, a "
                        f"tie (kept int8) for {len(verdicts) - faster - slower}")
    return start


def _final_check(meter: OrtMeter, prepared: Any, base: QuantConfig, ladders: dict[str, list[Rung]],
                 assignment: dict[str, int], latency_fp32: list[str], report: AutoQuantReport, evaluate: Evaluator,
                 meets: Callable[[float], bool]) -> tuple[nn.Module, QuantConfig, float] | None:
    """The chosen model must be at least as fast as all-int8 (paired timing); if all-int8 is significantly
    faster, the layers kept fp32 for latency go back to int8 when the metric still meets the target."""
    verdict = meter.compare("all-int8", "chosen")
    report.notes.append(f"final check: chosen {verdict.b_ms:.3f} ms vs all-int8 {verdict.a_ms:.3f} ms on ONNX "
                        f"Runtime ({verdict.pairs} paired rounds, chosen faster in {verdict.b_wins})")
    if not verdict.a_faster or not latency_fp32 or evaluate.left < 1:
        return None
    trial = {**assignment, **{n: 0 for n in latency_fp32}}
    candidate = convert_prepared(prepared, build_config(base, ladders, trial))
    metric = evaluate(candidate, "layers kept fp32 for latency back to int8")
    report.steps.append(Step(len(report.steps), "layers kept fp32 for latency back to int8", metric, meets(metric),
                             evaluate.calls))
    if not meets(metric):
        return None
    report.precisions.update({n: ladders[n][0].label for n in latency_fp32})
    times = meter.measure({"chosen, int8 kept": candidate})
    report.variants = [v if v.name != "chosen" else Variant("chosen", metric, times["chosen, int8 kept"].latency_ms,
                                                            times["chosen, int8 kept"].size_bytes)
                       for v in report.variants]
    report.notes.append(f"all-int8 was faster than the chosen model: {len(latency_fp32)} layers kept fp32 for "
                        "latency are int8 again (the metric still meets the target)")
    return candidate, candidate.mixq_config, metric


def _measure_variants(meter: OrtMeter, model: nn.Module, prepared: Any, base: QuantConfig,
                      ladders: dict[str, list[Rung]], chosen: nn.Module, chosen_config: QuantConfig | None,
                      report: AutoQuantReport) -> tuple[nn.Module, QuantConfig | None, float]:
    """fp32 vs all-int8 vs chosen on ONNX Runtime (fills ``report.variants``); with the latency objective, a
    chosen model that is not faster than fp32 gives way to the fp32 model. Returns the final model, config and
    metric."""
    all_int8 = convert_prepared(prepared, build_config(base, ladders, {n: 0 for n in ladders}))
    times = meter.measure({"fp32": model, "all-int8": all_int8, "chosen": chosen})
    metrics = {v.name: v.metric for v in report.variants}
    if (report.objective == "latency" and chosen_config is not None
            and times["chosen"].latency_ms >= times["fp32"].latency_ms):
        report.notes.append(f"int8 does not make this model faster on ONNX Runtime here (chosen "
                            f"{times['chosen'].latency_ms:.3f} ms vs fp32 {times['fp32'].latency_ms:.3f} ms): the "
                            "whole model stays float")
        chosen, chosen_config, metrics["chosen"] = copy.deepcopy(model).eval(), None, report.baseline
        report.precisions = {n: "fp32" for n in ladders}
        times["chosen"] = times["fp32"]
    report.variants = [Variant(name, metrics[name], times[name].latency_ms, times[name].size_bytes)
                       for name in ("fp32", "all-int8", "chosen")]
    return chosen, chosen_config, metrics["chosen"]  # type: ignore[return-value]
