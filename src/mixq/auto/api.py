"""``mixq.autoquantize``: per-layer precisions chosen against the user's metric, with the evidence.

It runs the phases of ``mixq.auto.pipeline`` in order: calibrate, sensitivity, the all-int8 check, the latency
probe, the search, the choice (QAT as the last resort) and the final measurement on ONNX Runtime.

Cost, for ``L`` candidate layers (Linear/Conv and graph-mode adds), ``R`` rungs per ladder (at most 6) and ``S``
sensitivity batches: one calibration pass (whatever ``L``); ``L x R`` single-layer conversions, each run on ``S``
batches (no ``eval_fn`` calls); ``eval_fn`` calls: the fp32 baseline, the all-int8 check, up to
``sensitivity_evals`` single-layer checks and one per search step, never more than ``max_evals`` in all; per
deploy shape (``deploy_shapes``, default batch 1 and 32), with ``objective="latency"`` up to ``2 L + 4`` ONNX exports
and ONNX Runtime timings (each distinct layer shape in fp32 and int8, then the models), otherwise 4 (fp32, mixq
dynamic, all-int8, chosen, for the report; ``measure=False`` skips them with ``objective="accuracy"``).
Each search step moves one layer up one useful rung, so a search that must move ``k`` layers costs at most
``k x R`` evaluations and usually about ``k``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mixq.auto import pipeline
from mixq.auto.evaluation import Evaluator
from mixq.auto.latency import compare_layer
from mixq.auto.measure import Meters, OrtMeter, deploy_examples
from mixq.auto.pipeline import Context, Options, Target, timed
from mixq.auto.report import AutoQuantReport
from mixq.auto.sensitivity import analyse
from mixq.quant.api import make_config
from mixq.quant.calibration import Batch
from mixq.quant.finiteness import check_finite
from mixq.quant.observers import observer_class, observer_names
from mixq.quant.planning import split_first
from mixq.quant.smoothquant import smooth
from mixq.quant.spec import QuantConfig

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
    if config.runtime is not None and config.runtime_aware:
        raise ValueError(f"config has runtime={config.runtime!r} with runtime_aware=True, which autoquantize does not "
                         "apply (it times the layers itself on its runtime= argument); pass runtime_aware=False in "
                         "the config, so its runtime only sets how the simulation computes")
    if config.adaround:
        raise ValueError("autoquantize does not apply adaround yet (its per-layer configs are converted from one "
                         "calibration without the rounding stage); pass dataclasses.replace(result.config, "
                         "adaround=True) to mixq.quantize instead")
    if not observer_class(config.observer.name).capabilities.autoquant:
        usable = observer_names(autoquant=True)
        raise ValueError(f"autoquantize gathers histogram statistics once and cannot use the "
                         f"{config.observer.name!r} observer; use the {', '.join(usable[:-1])} or {usable[-1]} "
                         "observer")


def _smoothed(model: nn.Module, config: QuantConfig, probe: Batch, batches: Iterable[Batch],
              progress: bool) -> tuple[nn.Module, list[str]]:
    """``model`` with the config's SmoothQuant applied as ``mixq.quantize`` applies it (so ``result.config``
    reproduces the chosen model), and its notes; ``batches`` must be re-readable (the caller keeps a list)."""
    if config.smoothquant is None:
        return model, []
    return smooth(model, config.smoothquant, config, probe, batches, progress=progress)


def _runtime(name: str, timed: bool) -> Any:
    """The runtime latency is measured on, refused in one line when unknown, not installed, or never used."""
    from mixq.export.backend import get_runtime

    runtime = get_runtime(name)
    if not timed and name != "ort":
        raise ValueError(f"runtime={name!r} has no effect with measure=False and objective='accuracy' (nothing is "
                         "timed); drop it or pass measure=True")
    if timed and not runtime.available():
        raise ValueError(f"runtime={name!r} needs {runtime.title}, which is not installed; {runtime.install_hint}")
    return runtime


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
    deploy_shapes: Sequence[int] | Sequence[Batch] | None = None,
    progress: bool = False,
    runtime: str = "ort",
) -> AutoQuantResult:
    """Quantize ``model`` as far as ``eval_fn`` allows, choosing a precision per layer; ``model`` is not modified.

    ``eval_fn(model) -> float`` is your metric, higher is better; it runs on the fp32 model once (the baseline).
    The target is ``eval_fn >= baseline - max_drop`` (absolute, in the metric's units), or with ``relative=True``
    ``baseline - max_drop * |baseline|`` (``max_drop=0.01``: within 1 %). Calibration statistics are gathered once
    from ``calib_data``; every layer's sensitivity is measured from them; the search starts from static int8
    everywhere and moves the most sensitive layers up (the fallback observers the configured observer declares,
    e.g. percentile/MSE, then dynamic, fp16, fp32) until the target is met, calling ``eval_fn`` at most
    ``max_evals`` times in all (see the module docstring for costs).
    ``objective``: ``"latency"`` times candidates on ``runtime`` here (default ``"ort"``, ONNX Runtime; any name
    ``mixq.export.backend.get_runtime`` takes, e.g. ``"openvino"`` or ``"openvino:f32"``) and keeps float what int8
    does not speed up;
    ``"size"`` climbs the ladder in order of file size; ``"accuracy"`` moves each layer straight to its most
    accurate rung. ``example_inputs`` (default: the first calibration batch) is what is exported and timed.
    If nothing meets the target within budget, the best model found is returned with a warning saying by how much
    it misses. With ``train_fn``, QAT fine-tuning (``mixq.prepare_qat``, one evaluation kept back for it) is the
    last resort. ``measure=False`` skips the ONNX Runtime measurements of the report with ``objective="accuracy"``
    (the other objectives always measure); ``progress`` shows calibration progress.
    ``deploy_shapes``: the shapes the model will serve, timed for the latency probe, the final checks and the
    report (which compares fp32, mixq dynamic, all-int8 static and the choice at each): a list of batch sizes (the
    example repeated or sliced along dim 0 of every tensor, dicts of tensors alike; at most 4096, and 64 M elements)
    or a list of example inputs used as given; default batch 1 and 32 at the example's other dimensions. The
    latency objective keeps a layer (or the whole model) float only when int8 is significantly slower at one shape
    at least and slower on the mean of the per-shape time ratios. Refused with ``measure=False`` and
    ``objective="accuracy"``, where nothing is timed.

    Example::

        result = mixq.autoquantize(model, batches, lambda m: accuracy(m, x_val, y_val), max_drop=0.01)
        print(result.report); mixq.export_onnx(result.model, x[:1], "model.onnx")
    """
    start_time = time.perf_counter()
    base = config or make_config("static")
    _check(model, max_drop, objective, max_evals, sensitivity_batches, base)
    timed_at_all = measure or objective != "accuracy"
    if deploy_shapes is not None and not timed_at_all:
        raise ValueError("deploy_shapes has no effect with measure=False and objective='accuracy' (nothing is "
                         "timed); drop it or pass measure=True")
    meter_runtime = _runtime(runtime, timed_at_all)
    check_finite(model, "autoquantize")
    options = Options(objective, max_evals, sensitivity_evals, sensitivity_batches, min_gain_db, progress)
    evaluate = Evaluator(eval_fn, max_evals)
    probe, batches = split_first(calib_data)
    if base.smoothquant is not None:
        batches = list(batches)  # read twice: SmoothQuant's statistics, then calibration
    example = probe if example_inputs is None else example_inputs
    shapes = deploy_examples(example, deploy_shapes) if timed_at_all else []
    target = Target.of(evaluate(model, "fp32"), max_drop, relative)
    seconds: dict[str, float] = {}
    with timed(seconds, "calibration"):
        smoothed, smooth_notes = _smoothed(model, base, probe, batches, progress)
        calibration = pipeline.calibrate(smoothed, base, options, probe, batches)
    with timed(seconds, "sensitivity"):
        sensitivity = analyse(calibration.prepared, base, calibration.ladders, calibration.kept)
    report = AutoQuantReport(objective, float(max_drop), relative, target.baseline, target.required, False, 0.0, 0,
                             max_evals, sensitivity, seconds=seconds)
    report.notes += smooth_notes
    ctx = Context(model, base, options, evaluate, target, example, calibration, report)
    int8_metric = pipeline.check_all_int8(ctx)
    report.runtime = meter_runtime.display
    meter = Meters.build(lambda ex: OrtMeter(ex, runtime=runtime), shapes) if timed_at_all else None
    with timed(seconds, "latency_probe"):
        start = pipeline.probe_latency(ctx, meter, compare_layer)
    with timed(seconds, "search"):
        outcome = pipeline.search(ctx, start, int8_metric, reserve=1 if train_fn is not None else 0)
    choice = pipeline.choose(ctx, outcome, int8_metric, train_fn)
    with timed(seconds, "measure"):
        choice = pipeline.measure(ctx, meter, choice, start.kept_fp32(outcome.assignment))
    pipeline.conclude(ctx, choice)
    seconds["total"] = time.perf_counter() - start_time
    return AutoQuantResult(choice.model, choice.config, report)
