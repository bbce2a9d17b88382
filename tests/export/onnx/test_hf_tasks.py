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
