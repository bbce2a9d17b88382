"""Static graph mode on a Hugging Face task model captures its base model (``mixq.quant.root_capture``): the model
keeps its own class, its head and loss stay its Python (``labels`` work), and the head's layers are quantized as
the summary says, with graph mode's decisions (a Linear output no integer kernel reads stays float, a tensor going
straight from one layer into the next keeps one scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq
from mixq.quant.modules import QuantizedLinear

transformers = pytest.importorskip("transformers")


def _config(**extra) -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32, initializer_range=0.1, **extra)


def _batches(count: int, seed: int = 0, size: tuple[int, int] = (2, 8)) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 100, size, generator=g)} for _ in range(count)]


def test_a_static_task_model_keeps_its_class_and_takes_labels(tmp_path, ort_run):
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_config(num_labels=3)).eval()
    qmodel = mixq.quantize(model, "static", calib_data=_batches(4), progress=False)
    assert type(qmodel) is transformers.BertForSequenceClassification  # the user's class itself, not a subclass
    assert isinstance(qmodel.bert, transformers.BertModel) and type(qmodel.bert) is not transformers.BertModel
    assert any("captured its bert (BertModel" in n for n in qmodel.mixq_summary.notes), qmodel.mixq_summary.notes
    x = _batches(1, seed=9, size=(4, 11))[0]
    labels = torch.tensor([0, 2, 1, 2])
    with torch.no_grad():
        out = qmodel(**x, labels=labels)
        assert torch.equal(out.logits, qmodel(**x).logits)
        ref = model(**x).logits
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels), rtol=0, atol=0)  # its own head's loss
    assert (out.logits - ref).norm() / ref.norm() < 0.05
    path = mixq.export_onnx(qmodel, _batches(1)[0], tmp_path / "cls.onnx")
    (logits,) = ort_run(path, **x)
    assert np.abs(logits - out.logits.numpy()).max() <= 1e-4 * np.abs(logits).max()


class TwoLayerHead(transformers.BertPreTrainedModel):
    """A task model whose head is two Linears, the second reading the first's output tensor as it is."""

    def __init__(self, config: transformers.BertConfig) -> None:
        super().__init__(config)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.proj, self.out = nn.Linear(config.hidden_size, 16), nn.Linear(16, 3)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.bert(input_ids, attention_mask=attention_mask).last_hidden_state
        return self.out(self.proj(hidden[:, 0]))


def test_the_head_is_quantized_as_the_summary_says():
    torch.manual_seed(0)
    model = TwoLayerHead(_config()).eval()
    qmodel = mixq.quantize(model, "static", calib_data=_batches(4), progress=False)
    rows = {r.name: r for r in qmodel.mixq_summary.layers}
    assert rows["proj"].status == rows["out"].status == "quantized"
    assert "float output" not in rows["proj"].detail and "float output" in rows["out"].detail
    proj, out = qmodel.proj, qmodel.out
    assert isinstance(proj, QuantizedLinear) and isinstance(out, QuantizedLinear)
    assert proj.y_scale is not None and out.y_scale is None  # the logits: no integer kernel reads them
    assert torch.equal(out.x_scale, proj.y_scale) and torch.equal(out.x_zp, proj.y_zp)  # one tensor, one scale
    note = next(n for n in qmodel.mixq_summary.notes if n.startswith("the task head (proj, out)"))
    assert "1 Linear outputs stay float" in note and "1 inputs share" in note, note
    x = _batches(1, seed=5)[0]
    with torch.no_grad():
        ref, got = model(**x), qmodel(**x)
    assert (got - ref).norm() / ref.norm() < 0.05


class HiddenStatesHead(transformers.BertPreTrainedModel):
    """A head that asks its base model for a flag the captured graph does not honour (its hidden states)."""

    def __init__(self, config: transformers.BertConfig) -> None:
        super().__init__(config)
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.out = nn.Linear(config.hidden_size, 3)
        self.post_init()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids, output_hidden_states=True).hidden_states
        return self.out(hidden[1][:, 0])


def test_a_base_model_whose_graph_ignores_the_heads_flags_is_not_captured_alone():
    """The graph is captured from the base model's tensors only; a flag the head passes (output_hidden_states)
    is accepted only where the graph computes the same with it. Here it does not, so the whole model is captured,
    as before base models were."""
    torch.manual_seed(0)
    model = HiddenStatesHead(_config()).eval()
    qmodel = mixq.quantize(model, "static", calib_data=_batches(4), progress=False)
    notes = " ".join(qmodel.mixq_summary.notes)
    assert "bert could not be captured alone (the captured graph returns" in notes, notes
    assert isinstance(qmodel, HiddenStatesHead) and type(qmodel) is not HiddenStatesHead  # grafted whole
    x = _batches(1, seed=5)[0]
    with torch.no_grad():
        ref, got = model(**x), qmodel(**x)
    assert (got - ref).norm() / ref.norm() < 0.05


def test_qat_from_a_static_task_model_keeps_its_base_models_shared_scales():
    """QAT starting from the calibrated model finds graph mode's scale sharing inside the grafted base model too."""
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)).eval()
    g = torch.Generator().manual_seed(0)
    calib = [{"pixel_values": torch.randn(2, 3, 32, 32, generator=g)} for _ in range(4)]
    qmodel = mixq.quantize(model, "static", calib_data=calib, progress=False)
    assert type(qmodel) is transformers.ResNetForImageClassification
    note = next(n for n in mixq.prepare_qat(qmodel).mixq_qat_plan.notes if n.startswith("started from"))
    assert "(0 inputs share" not in note, note
