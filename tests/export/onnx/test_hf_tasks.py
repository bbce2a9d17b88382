"""``mixq.export_onnx`` on every Hugging Face task head (tiny random configs): the example given as a dict of
keyword tensors or as a positional tuple, the file's outputs named like the model's (``logits``,
``start_logits``...), and ONNX Runtime computing what PyTorch computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import mixq

pytest.importorskip("transformers")
from tests.export.hf_tasks import TASKS, build  # noqa: E402


def _check(path, model, example, ort_run, atol: float = 1e-4) -> None:
    with torch.no_grad():
        expected = model(**example)
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names == [k for k in expected if k not in ("cache", "past_key_values")]  # no KV cache exported
    outputs = ort_run(path, **example)
    for name, actual in zip(names, outputs, strict=True):
        np.testing.assert_allclose(actual, expected[name].numpy(), atol=atol, err_msg=name)


@pytest.mark.parametrize("task", list(TASKS))
def test_task_model_exports_from_a_dict_with_its_output_names(task, tmp_path, ort_run):
    model, example = build(task)
    path = mixq.export_onnx(model, example, tmp_path / f"{task}.onnx")
    _check(path, model, example, ort_run)


@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm-llama", "image-classification"])
def test_task_model_exports_from_a_positional_tuple(task, tmp_path, ort_run):
    model, example = build(task)
    path = mixq.export_onnx(model, tuple(example.values()), tmp_path / f"{task}.onnx")
    _check(path, model, example, ort_run)


def test_quantized_classifiers_export_with_config_use_cache(tmp_path, ort_run):
    """BertForSequenceClassification has ``config.use_cache`` and a ``**kwargs`` forward (issue 24, item 1)."""
    model, example = build("sequence-classification")
    assert model.config.use_cache
    dynamic = mixq.quantize(model, "dynamic")
    qat = mixq.prepare_qat(model, example_inputs=example)
    qat(**example).logits.sum().backward()
    for name, qmodel in (("dynamic", dynamic), ("qat", mixq.convert(qat.eval()))):
        path = mixq.export_onnx(qmodel, example, tmp_path / f"{name}.onnx")
        assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits"]
        assert model.config.use_cache  # restored after the export
        _check(path, qmodel, example, ort_run, atol=1e-3)


@pytest.mark.parametrize("mode", ["float", "dynamic", "static"])
@pytest.mark.parametrize("task", ["causal-lm-llama", "causal-lm-gpt2"])
def test_causal_lm_exports_from_positional_input_ids(task, mode, tmp_path, ort_run):
    """``export_onnx(model, (input_ids,), path)`` on a causal LM with ``config.use_cache`` (issue 18, item 3)."""
    model, example = build(task)
    ids = example["input_ids"]
    qmodel = model if mode == "float" else mixq.quantize(model, mode, calib_data=[ids], progress=False)
    path = mixq.export_onnx(qmodel, (ids,), tmp_path / f"{mode}.onnx")
    with torch.no_grad():
        expected = qmodel(ids).logits.numpy()
    np.testing.assert_allclose(ort_run(path, ids)[0], expected, atol=1e-3)


def test_positional_inputs_that_land_on_another_parameter_are_named(tmp_path):
    model, example = build("causal-lm-gpt2")
    with pytest.raises(mixq.ExportError, match=r"read as input_ids, \w+; pass a dict"):
        mixq.export_onnx(model, (example["input_ids"], example["attention_mask"]), tmp_path / "m.onnx")
