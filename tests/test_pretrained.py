"""``mixq.save_pretrained`` / ``mixq.from_pretrained``: a quantized model saved and loaded back equals the saved one
bit for bit in every mode, and transformers never loads the directory as a float model with random weights."""

from __future__ import annotations

import json

import pytest
import torch

import mixq

transformers = pytest.importorskip("transformers")
from tests.export.hf_tasks import build  # noqa: E402


def _quantized(mode: str):
    model, example = build("sequence-classification")
    if mode == "qat":
        qat = mixq.prepare_qat(model, example_inputs=example)
        qat(**example).logits.sum().backward()
        return mixq.convert(qat.eval()), example
    options = {"static": {"calib_data": [example]}, "weight_only": {"bits": 4, "group_size": 16},
               "weight_only_litert": {"bits": 4, "group_size": 16, "runtime": "litert"}}.get(mode, {})
    return mixq.quantize(model, mode.removesuffix("_litert"), progress=False, **options), example


def _assert_identical(a: torch.nn.Module, b: torch.nn.Module, example) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    with torch.no_grad():
        assert torch.equal(a(**example).logits, b(**example).logits)


@pytest.mark.parametrize("mode", ["dynamic", "static", "weight_only", "weight_only_litert", "fp16", "qat"])
def test_round_trip_is_bit_exact(mode, tmp_path):
    qmodel, example = _quantized(mode)
    mixq.save_pretrained(qmodel, tmp_path / "q", example_inputs=example)
    loaded = mixq.from_pretrained(tmp_path / "q")
    _assert_identical(qmodel, loaded, example)
    rows = {m.rows for m in loaded.modules() if isinstance(m, mixq.quant.modules.WeightOnlyLinear)}
    assert rows == ({mode == "weight_only_litert"} if mode.startswith("weight_only") else set())  # LiteRT's rows
    assert loaded.mixq_config == qmodel.mixq_config
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["quant_method"] == "mixq"


def test_transformers_refuses_the_directory_and_save_pretrained_keeps_the_quantized_layers(tmp_path):
    qmodel, example = _quantized("dynamic")
    qmodel.save_pretrained(tmp_path / "q")  # transformers' method on the quantized model: routed to mixq's
    with pytest.raises(OSError):  # never float layers with random weights
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    _assert_identical(qmodel, mixq.from_pretrained(tmp_path / "q"), example)


def test_a_plain_module_loads_with_its_float_architecture(tmp_path, trained_mlp):
    x = torch.rand(4, 64, generator=torch.Generator().manual_seed(0))
    qmodel = mixq.quantize(trained_mlp, "static", calib_data=[x], progress=False)
    with pytest.raises(ValueError, match="example_inputs"):
        mixq.save_pretrained(qmodel, tmp_path / "q")
    mixq.save_pretrained(qmodel, tmp_path / "q", example_inputs=x)
    with pytest.raises(mixq.pretrained.LoadError, match="model="):
        mixq.from_pretrained(tmp_path / "q")
    loaded = mixq.from_pretrained(tmp_path / "q", model=type(trained_mlp)())
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_a_float_model_is_refused(tmp_path):
    model, _ = build("sequence-classification")
    with pytest.raises(ValueError, match="not quantized by mixq"):
        mixq.save_pretrained(model, tmp_path / "q")
