"""``autoquantize(deploy_shapes=...)``: the shapes the model serves are built, timed (ONNX Runtime stood in for by a
fake meter that records the examples it is given) and compared side by side with mixq dynamic."""

from __future__ import annotations

import pytest
import torch

import mixq
import mixq.auto.api as api
from mixq.auto import autoquantize
from mixq.auto.latency import Comparison
from mixq.auto.measure import Measurement, deploy_examples

FAST = mixq.QuantConfig("static", observer=mixq.ObserverSpec("minmax", bins=256))


class _ShapeMeters:
    """``OrtMeter`` stand-in: one fake meter per example it is built with (recorded); latencies per label and batch
    size (``{batch: {label: ms}}``, 0.6 ms for labels not given)."""

    def __init__(self, latencies=None):
        self.latencies = latencies or {}
        self.examples = []

    def __call__(self, example_inputs, runtime="ort"):
        self.examples.append(example_inputs)
        return _Meter(self.latencies.get(example_inputs.shape[0], {}))


class _Meter:
    def __init__(self, latencies):
        from mixq.export.backend import get_runtime

        self.latencies, self.folder, self.threads, self.runtime = latencies, None, 1, get_runtime("ort")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def measure(self, models):
        return {label: Measurement(self.latencies.get(label, 0.6), 1000) for label in models}

    def compare(self, a, b):
        a_ms, b_ms = self.latencies.get(a, 0.6), self.latencies.get(b, 0.6)
        return Comparison(a_ms, b_ms, 15 if b_ms < a_ms else 0, 15)


def _auto(case, **kwargs):
    model, batches, eval_fn = case
    return autoquantize(model, batches, eval_fn, **{**dict(max_drop=0.05, objective="size", config=FAST), **kwargs})


def test_deploy_batch_sizes_reach_the_meter_and_the_report(outlier_case, monkeypatch):
    meters = _ShapeMeters({2: {"fp32": 1.0, "dynamic": 0.8, "all-int8": 0.5, "chosen": 0.4},
                           8: {"fp32": 4.0, "dynamic": 2.0, "all-int8": 1.0, "chosen": 1.0}})
    monkeypatch.setattr(api, "OrtMeter", meters)
    report = _auto(outlier_case, deploy_shapes=[2, 8]).report
    assert [tuple(x.shape) for x in meters.examples] == [(2, 16), (8, 16)]
    assert [v.name for v in report.variants] == ["fp32", "dynamic", "all-int8", "chosen"]
    dynamic = report.variants[1]
    assert dynamic.metric is None and dynamic.latency_by_shape == {"2x16": 0.8, "8x16": 2.0}
    assert report.variants[3].latency_by_shape == {"2x16": 0.4, "8x16": 1.0}
    text = report.to_markdown()
    assert ("| model | metric | Δ vs fp32 | ORT ms @ 2x16 | ORT ms @ 8x16 | vs dynamic @ 2x16 | vs dynamic @ 8x16 |"
            in text)
    assert "| chosen |" in text and "| 0.400 | 1.000 | 0.50x | 0.50x |" in text
    assert report.to_dict()["variants"][1]["latency_by_shape"] == {"2x16": 0.8, "8x16": 2.0}


def test_default_deploy_shapes_are_batch_1_and_32_of_the_example(outlier_case, monkeypatch):
    meters = _ShapeMeters()
    monkeypatch.setattr(api, "OrtMeter", meters)
    model, batches, _ = outlier_case
    report = _auto(outlier_case, example_inputs=batches[0][:3]).report
    assert [tuple(x.shape) for x in meters.examples] == [(1, 16), (32, 16)]
    assert torch.equal(meters.examples[1][:3], batches[0][:3]) and torch.equal(meters.examples[1][3:6],
                                                                                batches[0][:3])
    assert list(report.variants[0].latency_by_shape) == ["1x16", "32x16"]


def test_deploy_example_inputs_are_used_as_given(outlier_case, monkeypatch):
    meters = _ShapeMeters()
    monkeypatch.setattr(api, "OrtMeter", meters)
    given = [torch.randn(5, 16), torch.randn(7, 16)]
    _auto(outlier_case, deploy_shapes=given)
    assert meters.examples[0] is given[0] and meters.examples[1] is given[1]


def test_one_deploy_shape_keeps_the_single_latency_column(outlier_case, monkeypatch):
    monkeypatch.setattr(api, "OrtMeter", _ShapeMeters())
    text = _auto(outlier_case, deploy_shapes=[4]).report.to_markdown()
    assert "| model | metric | Δ vs fp32 | ORT latency (ms) | vs dynamic | ONNX size (KB) |" in text


def test_dicts_and_tuples_of_tensors_are_resized_on_the_batch_axis():
    ids = torch.arange(6).reshape(2, 3)
    example = {"input_ids": ids, "attention_mask": torch.ones(2, 3, dtype=torch.long), "flag": True}
    (label, small), (_, big) = deploy_examples(example, [1, 5])
    assert label == "1x3" and torch.equal(small["input_ids"], ids[:1]) and small["flag"] is True
    assert big["input_ids"].shape == (5, 3) and torch.equal(big["input_ids"][4], ids[0])
    assert big["attention_mask"].shape == (5, 3)
    ((_, triple),) = deploy_examples((ids, ids.float(), torch.tensor(0.5)), [3])
    assert isinstance(triple, tuple) and triple[1].shape == (3, 3) and triple[2].shape == ()
    with pytest.raises(ValueError, match="rows on dim 0"):
        deploy_examples(torch.zeros(0, 3), [1])


def test_the_latency_cost_is_the_mean_of_the_per_shape_ratios(outlier_case, monkeypatch):
    """The issue's case: the choice is 1.10x fp32 at batch 1 but 0.85x at batch 32; the mean ratio (0.975) keeps
    it, where timing batch 1 alone would have thrown it away."""
    monkeypatch.setattr(api, "compare_layer", lambda *a, **k: Comparison(0.4, 0.3, 15, 15))  # int8 faster
    meters = _ShapeMeters({1: {"fp32": 1.0, "all-int8": 1.1, "chosen": 1.1},
                           32: {"fp32": 10.0, "all-int8": 8.5, "chosen": 8.5}})
    monkeypatch.setattr(api, "OrtMeter", meters)
    result = _auto(outlier_case, objective="latency")
    assert result.config is not None and not any("whole model stays float" in n for n in result.report.notes)
    meters.latencies[32]["chosen"] = 10.5  # now slower on the mean too
    result = _auto(outlier_case, objective="latency")
    notes = [n for n in result.report.notes if "whole model stays float" in n]
    assert result.config is None and len(notes) == 1
    assert "chosen 1.100 ms vs fp32 1.000 ms at 1x16; chosen 10.500 ms vs fp32 10.000 ms at 32x16" in notes[0]


@pytest.mark.parametrize("shapes, match", [
    ([], "must not be empty"),
    (4, "must be a list"),
    ([0], "between 1 and 4096"),
    ([10**6], "between 1 and 4096"),
    ([True], "must be tensors, dicts"),
    ([1, 1], "repeated batch sizes"),
    ([1, torch.randn(2, 16)], "not a mix"),
    (["1x128"], "must be tensors, dicts"),
    ([torch.randn(2, 16), torch.randn(2, 16)], "repeated shapes"),
    ([4096], "limit"),
], ids=["empty", "int", "zero", "huge", "bool", "repeated", "mixed", "string", "same-shape", "too-many-elements"])
def test_bad_deploy_shapes_are_refused_in_one_line_before_eval_fn(outlier_case, shapes, match, monkeypatch):
    monkeypatch.setattr(api, "OrtMeter", _ShapeMeters())
    model, batches, _ = outlier_case
    calls = []
    wide = [torch.randn(2, 20000)] if match == "limit" else batches
    with pytest.raises((ValueError, TypeError), match=match) as err:
        autoquantize(model, wide, calls.append, objective="size", deploy_shapes=shapes, config=FAST)
    assert "\n" not in str(err.value) and not calls


def test_deploy_shapes_are_refused_where_nothing_is_timed(outlier_case):
    model, batches, eval_fn = outlier_case
    with pytest.raises(ValueError, match="deploy_shapes has no effect with measure=False"):
        autoquantize(model, batches, eval_fn, objective="accuracy", measure=False, deploy_shapes=[1])
