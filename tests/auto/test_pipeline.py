"""``mixq.auto.pipeline``: each phase of autoquantize on its own, through the ``Context`` it shares."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import mixq
from mixq.auto import pipeline
from mixq.auto.evaluation import Evaluator
from mixq.auto.pipeline import Calibration, Choice, Context, Options, Start, Target
from mixq.auto.report import AutoQuantReport
from mixq.auto.search import Outcome
from mixq.auto.sensitivity import analyse
from mixq.quant.modules import QuantizedLinear

FAST = mixq.QuantConfig("static", observer=mixq.ObserverSpec("minmax", bins=256))
OPTIONS = Options("accuracy", max_evals=8, sensitivity_evals=2, sensitivity_batches=2, min_gain_db=1.0,
                  progress=False)


@pytest.fixture(scope="module")
def calibrated(outlier_case) -> Calibration:
    model, batches, _ = outlier_case
    return pipeline.calibrate(model, FAST, OPTIONS, batches[0], batches[1:])


@pytest.fixture
def ctx(outlier_case, calibrated) -> Context:
    model, batches, eval_fn = outlier_case
    evaluate = Evaluator(eval_fn, OPTIONS.max_evals)
    target = Target.of(evaluate(model, "fp32"), 0.05, False)
    sensitivity = analyse(calibrated.prepared, FAST, calibrated.ladders, calibrated.kept)
    report = AutoQuantReport("accuracy", 0.05, False, target.baseline, target.required, False, 0.0, 0,
                             OPTIONS.max_evals, sensitivity)
    return Context(model, FAST, OPTIONS, evaluate, target, batches[0], calibrated, report)


@pytest.mark.parametrize("relative, required", [(False, 0.8), (True, 0.9)], ids=["absolute", "relative"])
def test_target(relative, required):
    target = Target.of(1.0, 0.2 if not relative else 0.1, relative)
    assert target.required == pytest.approx(required) and target.allowed == pytest.approx(1.0 - required)
    assert target.meets(required + 1e-9) and not target.meets(required - 1e-6)


def test_results_are_frozen(calibrated):
    with pytest.raises(dataclasses.FrozenInstanceError):
        calibrated.kept = []  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Outcome({}, 1.0).metric = 0.0  # type: ignore[misc]


def test_calibrate_keeps_the_sensitivity_batches_and_builds_the_ladders(outlier_case, calibrated):
    _, batches, _ = outlier_case
    assert [b is k for b, k in zip(batches[1:3], calibrated.kept, strict=True)] == [True, True]
    assert list(calibrated.ladders) == ["fc1", "fc2", "fc3"]
    labels = [r.label for r in calibrated.ladders["fc2"]]
    assert labels == ["int8 minmax", "int8 percentile", "int8 mse", "dynamic int8", "fp16", "fp32"]
    assert calibrated.all_int8 == {"fc1": 0, "fc2": 0, "fc3": 0}
    assert calibrated.fp32 == {"fc1": 5, "fc2": 5, "fc3": 5}


def test_run_records_steps_and_does_not_evaluate_fp32_again(ctx):
    calls = ctx.evaluate.calls
    assert ctx.run(ctx.calibration.fp32, "fp32 everywhere") == ctx.target.baseline
    assert ctx.evaluate.calls == calls and ctx.report.steps[-1].action == "fp32 everywhere"
    metric = pipeline.check_all_int8(ctx)
    assert ctx.evaluate.calls == calls + 1
    assert ctx.report.steps[-1] == ctx.report.steps[1] and ctx.report.steps[1].metric == metric
    assert not ctx.report.steps[1].meets  # the outlier layer ruins all-int8


def test_probe_latency_starts_all_int8_without_the_latency_objective(ctx):
    def no_timing(*args):
        raise AssertionError("the probe must not time layers for objective='accuracy'")

    assert pipeline.probe_latency(ctx, None, no_timing) == Start(ctx.calibration.all_int8)


def test_start_names_the_layers_still_fp32_for_latency():
    start = Start({"a": 3, "b": 0, "c": 2}, frozenset({"a", "c"}))
    assert start.kept_fp32({"a": 3, "b": 1, "c": 2}) == ["a", "c"]
    assert start.kept_fp32({"a": 0, "b": 1, "c": 2}) == ["c"]


def test_search_moves_the_outlier_layer_and_gives_back_the_reserve(ctx):
    int8_metric = pipeline.check_all_int8(ctx)
    outcome = pipeline.search(ctx, Start(ctx.calibration.all_int8), int8_metric, reserve=1)
    assert ctx.evaluate.max_evals == OPTIONS.max_evals  # the QAT reserve is back
    assert ctx.target.meets(outcome.metric) and outcome.assignment["fc2"] > 0
    assert outcome.assignment["fc1"] == outcome.assignment["fc3"] == 0
    assert ctx.report.sensitivity[0].name == "fc2" and ctx.report.sensitivity[0].eval_drop > 0.1


def test_search_without_budget_returns_all_int8(ctx):
    int8_metric = pipeline.check_all_int8(ctx)
    ctx.evaluate.max_evals = ctx.evaluate.calls
    outcome = pipeline.search(ctx, Start(ctx.calibration.all_int8), int8_metric, reserve=0)
    assert outcome == Outcome(ctx.calibration.all_int8, int8_metric)


def test_choose_converts_the_assignment_and_fills_the_report(ctx):
    assignment = {"fc1": 0, "fc2": 5, "fc3": 0}
    choice = pipeline.choose(ctx, Outcome(assignment, 0.99), 0.5, None)
    assert isinstance(choice.model.fc1, QuantizedLinear) and not isinstance(choice.model.fc2, QuantizedLinear)
    assert choice.config == choice.model.mixq_config and choice.assignment == assignment
    assert ctx.report.precisions == {"fc1": "int8 minmax", "fc2": "fp32", "fc3": "int8 minmax"}
    assert [(v.name, v.metric) for v in ctx.report.variants] == [("fp32", ctx.target.baseline), ("all-int8", 0.5),
                                                                 ("chosen", 0.99)]


def test_choose_float_everywhere_is_a_float_copy(ctx):
    choice = pipeline.choose(ctx, Outcome(ctx.calibration.fp32, ctx.target.baseline), 0.5, None)
    assert choice.config is None and type(choice.model.fc1) is nn.Linear and choice.model is not ctx.model


def test_measure_without_a_meter_keeps_the_choice(ctx):
    choice = Choice(ctx.model, None, 1.0)
    assert pipeline.measure(ctx, None, choice, []) is choice


def test_conclude_warns_on_a_miss(ctx):
    with pytest.warns(UserWarning, match="no configuration met the target"):
        pipeline.conclude(ctx, Choice(ctx.model, None, ctx.target.required - 0.25))
    assert not ctx.report.met and ctx.report.miss == pytest.approx(0.25)
    pipeline.conclude(ctx, Choice(ctx.model, None, ctx.target.baseline))
    assert ctx.report.met and ctx.report.miss == 0.0 and ctx.report.evaluations == ctx.evaluate.calls


def test_timed_records_the_phase():
    seconds: dict[str, float] = {}
    with pipeline.timed(seconds, "search"):
        torch.zeros(1)
    assert list(seconds) == ["search"] and seconds["search"] >= 0.0
