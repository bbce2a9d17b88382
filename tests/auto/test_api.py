"""``mixq.autoquantize``: sensitivity finds the layer int8 ruins, the search keeps it in higher precision and
quantizes the rest, well-behaved models cost no extra evaluations, and bad input gets clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch
from torch import nn

import mixq
from mixq.auto import EvalFnError, autoquantize
from mixq.quant.modules import QuantizedLinear

FAST = mixq.QuantConfig("static", observer=mixq.ObserverSpec("minmax", bins=256))  # coarser histograms: faster MSE


def _auto(case, **kwargs):
    model, batches, eval_fn = case
    options = dict(max_drop=0.05, objective="accuracy", measure=False, config=FAST)
    return autoquantize(model, batches, eval_fn, **{**options, **kwargs})


@pytest.fixture(scope="module")
def outlier_result(outlier_case):
    return _auto(outlier_case)


def test_the_outlier_layer_ranks_first_and_alone_keeps_higher_precision(outlier_case, outlier_result):
    model, batches, eval_fn = outlier_case
    result = outlier_result
    report = result.report
    worst = report.sensitivity[0]
    assert worst.name == "fc2" and "input activation outliers" in worst.reason
    assert worst.output_sqnr_db < 15 < min(r.output_sqnr_db for r in report.sensitivity[1:])
    assert not report.steps[0].meets  # all-int8 misses the target...
    assert report.met and eval_fn(result.model) >= report.required  # ...the chosen model meets it
    assert report.precisions["fc2"] in ("fp16", "fp32")
    assert report.precisions["fc1"].startswith("int8") and report.precisions["fc3"].startswith("int8")
    assert isinstance(result.model.fc1, QuantizedLinear) and isinstance(result.model.fc3, QuantizedLinear)
    assert not isinstance(result.model.fc2, QuantizedLinear)


def test_the_chosen_config_reproduces_the_model_through_quantize(outlier_case, outlier_result):
    model, batches, _ = outlier_case
    result = outlier_result
    again = mixq.quantize(model, calib_data=batches, config=result.config, progress=False)
    x = batches[0]
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))
    assert mixq.QuantConfig.from_dict(json.loads(json.dumps(result.config.to_dict()))) == result.config


@pytest.mark.parametrize("option", [dict(bias_correction=True), dict(smoothquant=0.5)])
def test_every_option_of_the_config_reaches_the_chosen_model(outlier_case, option):
    model, batches, _ = outlier_case
    result = _auto(outlier_case, config=dataclasses.replace(FAST, **option))
    assert all(getattr(result.config, k) == v for k, v in option.items())
    assert result.model.mixq_config == result.config
    again = mixq.quantize(model, calib_data=batches, config=result.config, progress=False)
    without = mixq.quantize(model, calib_data=batches, config=dataclasses.replace(result.config, **{
        k: getattr(FAST, k) for k in option}), progress=False)
    x = batches[0]
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))
        assert not torch.equal(without(x), result.model(x))  # the option changed what the chosen model computes


def test_the_configs_runtime_reaches_the_chosen_model(outlier_case):
    result = _auto(outlier_case, config=dataclasses.replace(FAST, runtime="litert", runtime_aware=False))
    assert result.config.runtime == "litert" and result.model.mixq_config.runtime == "litert"


def test_same_inputs_same_choice(outlier_case, outlier_result):
    first, second = outlier_result, _auto(outlier_case)
    assert first.config == second.config
    assert [(s.action, s.metric) for s in first.report.steps] == [(s.action, s.metric) for s in second.report.steps]
    assert first.report.precisions == second.report.precisions


@pytest.mark.parametrize("objective", ["size", "latency"])
def test_a_model_that_quantizes_well_costs_at_most_one_extra_evaluation(objective, trained_mlp, digits, tmp_path,
                                                                         ort_run):
    x, y = digits["x_test"], digits["y_test"]
    batches = [digits["x_train"][i:i + 100] for i in range(0, 300, 100)]

    def accuracy(model: nn.Module) -> float:
        return (model(x).argmax(1) == y).float().mean().item()

    result = autoquantize(trained_mlp, batches, accuracy, max_drop=0.02, objective=objective,
                          example_inputs=x[:8], config=FAST)
    report = result.report
    assert report.met and report.evaluations <= 3
    names = [v.name for v in report.variants]  # mixq dynamic measured beside them (not evaluated: metric None)
    assert names == ["fp32", "dynamic", "all-int8", "chosen"] and all(v.size_bytes > 0 for v in report.variants)
    assert report.variants[1].metric is None
    assert all(list(v.latency_by_shape) == ["1x64", "32x64"] for v in report.variants)  # default deploy shapes
    if objective == "size":
        assert report.evaluations == 2 and set(report.precisions.values()) == {"int8 minmax"}
        assert report.variants[3].size_bytes < report.variants[0].size_bytes
    path = mixq.export_onnx(result.model, x[:2], tmp_path / "chosen.onnx")
    (out,) = ort_run(path, x[:16])
    assert out.shape == (16, 10)


def test_relative_max_drop(outlier_case):
    report = _auto(outlier_case, max_drop=0.6, relative=True).report
    assert report.relative and math.isclose(report.required, report.baseline * 0.4)
    assert report.met and report.evaluations == 2  # all-int8 (0.46) is within 60 %


def test_an_unmeetable_budget_returns_the_best_found_with_a_warning(outlier_case):
    with pytest.warns(UserWarning, match=r"no configuration met the target.*below the required"):
        result = _auto(outlier_case, max_evals=2)
    report = result.report
    assert not report.met and report.miss > 0.4 and report.evaluations == 2
    assert isinstance(result.model.fc2, QuantizedLinear)  # all-int8 was the only candidate evaluated


def test_report_serialises_renders_and_plots(outlier_result, tmp_path):
    report = outlier_result.report
    data = json.loads(json.dumps(report.to_dict()))
    assert data["sensitivity"][0]["name"] == "fc2" and data["steps"][0]["action"] == "all layers static int8"
    text = report.to_markdown()
    assert "## Per-layer sensitivity (worst first)" in text and "| fc2 |" in text and "## Search" in text
    paths = report.write(tmp_path / "out")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text()) == data and paths["markdown"].read_text() == text


def test_qat_is_the_last_resort(outlier_case, monkeypatch):
    from mixq.auto import qat_fallback

    trained = []
    monkeypatch.setattr(qat_fallback, "prepare_qat", lambda m, example_inputs, weight_bits: m)
    monkeypatch.setattr(qat_fallback, "convert", lambda m: m)
    result = _auto(outlier_case, max_drop=0.0, max_evals=4, sensitivity_evals=0, train_fn=trained.append)
    assert len(trained) == 1 and result.config is None and result.report.met
    assert result.report.steps[-1].action.startswith("QAT") and result.report.evaluations == 4


def test_train_fn_is_skipped_with_a_note_when_the_budget_is_spent(outlier_case):
    trained = []
    with pytest.warns(UserWarning, match="no configuration met"):
        report = _auto(outlier_case, max_drop=0.0, max_evals=2, train_fn=trained.append).report
    assert trained == [] and any("budget was spent; QAT was skipped" in n for n in report.notes)


# --- bad input -------------------------------------------------------------------------------------------------

def test_eval_fn_that_raises_is_named(outlier_case):
    model, batches, _ = outlier_case

    def broken_metric(m):
        raise ZeroDivisionError("no samples")

    with pytest.raises(EvalFnError, match="eval_fn 'broken_metric' raised ZeroDivisionError .*fp32 model"):
        autoquantize(model, batches, broken_metric)


@pytest.mark.parametrize("value, match", [(float("nan"), "returned nan"), (float("inf"), "returned inf"),
                                          ("0.9", "returned a str")])
def test_eval_fn_returning_a_non_finite_or_non_number(outlier_case, value, match):
    model, batches, _ = outlier_case
    with pytest.raises(EvalFnError, match=match):
        autoquantize(model, batches, lambda m: value)


def test_eval_fn_failing_only_on_quantized_models_names_the_config(outlier_case):
    model, batches, _ = outlier_case

    def fragile(m):
        return 1.0 if isinstance(m.fc1, nn.Linear) else float("nan")

    with pytest.raises(EvalFnError, match="all layers static int8"):
        autoquantize(model, batches, fragile, objective="accuracy", measure=False)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(max_drop=-0.01), ValueError, "max_drop must be >= 0"),
    (dict(max_drop=float("nan")), TypeError, "finite number"),
    (dict(objective="speed"), ValueError, "objective must be one of latency, size, accuracy"),
    (dict(max_evals=1), ValueError, "max_evals must be >= 2"),
    (dict(config=mixq.make_config("dynamic")), ValueError, "static config"),
    (dict(config=mixq.make_config("static", runtime="ort")), ValueError, "runtime_aware=True, which autoquantize"),
    (dict(config=mixq.make_config("static", adaround=True)), ValueError, "does not apply adaround"),
])
def test_bad_arguments(outlier_case, kwargs, error, match):
    model, batches, eval_fn = outlier_case
    with pytest.raises(error, match=match):
        autoquantize(model, batches, eval_fn, **kwargs)


def test_no_warnings_on_the_happy_path(trained_mlp, digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autoquantize(trained_mlp, [digits["x_train"][:100]], lambda m: 1.0, objective="accuracy", measure=False,
                     config=FAST)


def test_real_qat_runs_train_fn_on_the_prepared_model(outlier_case):
    model, batches, _ = outlier_case
    seen = []

    def train_fn(qat_model: nn.Module) -> None:
        seen.append(qat_model)
        optimizer = torch.optim.SGD(qat_model.parameters(), lr=1e-4)
        qat_model.train()
        for x in batches[:2]:
            optimizer.zero_grad()
            with torch.no_grad():
                target = model(x)
            nn.functional.mse_loss(qat_model(x), target).backward()
            optimizer.step()

    with pytest.warns(UserWarning, match="no configuration met"):
        report = _auto(outlier_case, max_drop=0.0, max_evals=4, sensitivity_evals=0, train_fn=train_fn).report
    assert len(seen) == 1 and seen[0] is not model
    assert report.steps[-1].action.startswith("QAT") and report.evaluations == 4


def test_a_one_shot_generator_is_enough(outlier_case):
    model, batches, eval_fn = outlier_case
    result = autoquantize(model, (b for b in batches), eval_fn, max_drop=0.05, objective="accuracy", measure=False,
                          config=FAST, sensitivity_batches=1)
    assert result.report.met and result.report.sensitivity[0].name == "fc2"
    assert [v.name for v in result.report.variants] == ["fp32", "all-int8", "chosen"]  # metrics even unmeasured


class _FakeMeter:
    """Stands in for ONNX Runtime timing: fixed latencies per label (``chosen`` and unknown labels last)."""

    def __init__(self, latencies):
        from mixq.export.backend import get_runtime

        self.latencies, self.runtime = latencies, get_runtime("ort")
        self.folder, self.threads = None, 1

    def __call__(self, example_inputs, runtime="ort"):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def measure(self, models):
        from mixq.auto.measure import Measurement

        return {label: Measurement(self.latencies.get(label, 0.6), 1000) for label in models}

    def compare(self, a, b):
        from mixq.auto.latency import Comparison

        a_ms, b_ms = self.latencies.get(a, 0.6), self.latencies.get(b, 0.6)
        return Comparison(a_ms, b_ms, 15 if b_ms < a_ms else 0, 15)


def _fake_layer_timing(slow_layers):
    """``compare_layer`` stand-in: int8 is slower for layers of ``slow_layers``' shapes, faster for the rest."""
    from mixq.auto.latency import Comparison

    def compare_layer(float_layer, int8_layer, x, folder, tag, threads=1, runtime="ort"):
        layer = float_layer[0] if isinstance(float_layer, nn.Sequential) else float_layer  # ReLU fused: Sequential
        slow = (layer.in_features, layer.out_features) in slow_layers
        return Comparison(0.3, 0.4, 0, 15) if slow else Comparison(0.4, 0.3, 15, 15)
    return compare_layer


@pytest.mark.parametrize("chosen_ms, whole_float", [(0.45, False), (2.0, True)], ids=["mixed", "whole-float"])
def test_latency_keeps_float_what_int8_does_not_speed_up(outlier_case, monkeypatch, chosen_ms, whole_float):
    import mixq.auto.api as api

    model = outlier_case[0]
    meter = _FakeMeter({"fp32": 1.0, "all-int8": 0.5, "chosen": chosen_ms})
    monkeypatch.setattr(api, "OrtMeter", meter)
    monkeypatch.setattr(api, "compare_layer", _fake_layer_timing({(model.fc1.in_features, model.fc1.out_features)}))
    result = _auto(outlier_case, objective="latency")
    report = result.report
    assert any(n.startswith("fc1: int8 is not faster here") for n in report.notes)
    # 3 layer shapes at each of the default deploy shapes (batch 1 and 32)
    assert any(n.startswith("latency probe: 6 distinct layer shapes (deploy shapes 1x16, 32x16)")
               for n in report.notes)
    assert report.layer_latency_ms == {"fc1": 0.4, "fc2": 0.3, "fc3": 0.3}
    assert report.steps[1].action == "int8 where it is faster, fp32 elsewhere"
    if whole_float:
        assert result.config is None and set(report.precisions.values()) == {"fp32"}
        assert any("whole model stays float" in n for n in report.notes)
        assert type(result.model.fc1) is nn.Linear and report.met
    else:
        assert report.precisions["fc1"] == "fp32" and report.precisions["fc3"].startswith("int8")
        assert report.precisions["fc2"] != "fp16"  # the latency ladder skips float16 (no faster than fp32 on CPU)
        assert isinstance(result.model.fc3, QuantizedLinear) and report.met


def test_final_check_puts_latency_fp32_layers_back_when_all_int8_is_faster(outlier_case, monkeypatch):
    import mixq.auto.api as api

    model = outlier_case[0]
    monkeypatch.setattr(api, "OrtMeter", _FakeMeter({"fp32": 1.0, "all-int8": 0.5, "chosen": 0.7}))
    monkeypatch.setattr(api, "compare_layer", _fake_layer_timing({(model.fc3.in_features, model.fc3.out_features)}))
    result = _auto(outlier_case, objective="latency")
    report = result.report
    assert any(n.startswith("final check: chosen 0.700 ms vs all-int8 0.500 ms") for n in report.notes)
    assert report.steps[-1].action == "layers kept fp32 for latency back to int8"
    assert report.precisions["fc3"].startswith("int8") and isinstance(result.model.fc3, QuantizedLinear)


def test_paired_timing_calls_ties_on_noise():
    from mixq.auto.latency import Comparison, paired, sign_test_wins

    assert sign_test_wins(15) == 12
    assert not Comparison(10.0, 9.9, 15, 15).b_faster  # within the margin
    assert not Comparison(10.0, 8.0, 9, 15).b_faster  # not consistent enough
    assert Comparison(10.0, 8.0, 13, 15).b_faster and Comparison(8.0, 10.0, 2, 15).a_faster
    verdict = paired(lambda: sum(range(2000)), lambda: sum(range(2000)), pairs=7, calls=2)
    assert not verdict.a_faster or not verdict.b_faster


def test_graph_mode_matmuls_are_ranked_from_cached_inputs_and_chosen(monkeypatch):
    """A Hugging Face encoder goes through torch.export graph mode: its attention MatMuls get static/fp32 ladders,
    their sensitivity comes from cached inputs (no whole-model conversion per rung) and the result converts."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 100, (4, 12), generator=g)} for _ in range(3)]
    with torch.no_grad():
        reference = bert(**batches[0]).last_hidden_state

    def cosine(m):
        with torch.no_grad():
            out = m(**batches[0]).last_hidden_state
        return float(nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0))

    from mixq.auto import sensitivity

    whole = []
    original = sensitivity._whole_model_rows
    monkeypatch.setattr(sensitivity, "_whole_model_rows", lambda *a, **k: whole.append(a[3]) or original(*a, **k))
    result = _auto((bert, batches, cosine), max_drop=0.01)
    rows = {r.name: r for r in result.report.sensitivity}
    matmuls = [n for n, r in rows.items() if r.kind == "matmul"]
    assert len(matmuls) == 2 and all(math.isfinite(rows[n].output_sqnr_db) for n in matmuls)
    assert whole == []  # every module, MatMuls included, was measured on its cached inputs
    assert set(matmuls) <= set(result.report.precisions)
    assert result.report.met and cosine(result.model) >= result.report.required


def test_default_smoothquant_on_a_layernorm_model_is_what_the_chosen_config_reproduces():
    from tests.quant.tiny_transformer import data, plant_outliers, trained

    model = trained(steps=20)
    plant_outliers(model)
    x, y = data(64, seed=1)
    batches = [x[i:i + 16] for i in range(0, 64, 16)]
    result = autoquantize(model, batches, lambda m: (m(x).argmax(1) == y).float().mean().item(), max_drop=1.0,
                          objective="accuracy", measure=False, config=FAST)
    assert any("smooth" in n.lower() for n in result.report.notes)  # the LayerNorm default applied
    again = mixq.quantize(model, calib_data=batches, config=result.config, progress=False)
    with torch.no_grad():
        assert torch.equal(again(x), result.model(x))
