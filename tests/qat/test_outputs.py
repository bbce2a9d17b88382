"""QAT keeps a model's outputs float (issue 24, item 3): a classifier's logits are not fake-quantized to uint8 with
a range frozen early in training, so the loss keeps falling after the observers freeze."""

from __future__ import annotations

import pytest
import torch

import mixq
from mixq.quant.modules import QuantizedLinear

pytest.importorskip("transformers")
from tests.export.hf_tasks import build  # noqa: E402


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, 100, (64, 8), generator=torch.Generator().manual_seed(1))
    return ids, ids[:, 1] % 3  # a label the model can learn from one token


def test_classifier_trains_after_observers_freeze_with_float_logits():
    model, _ = build("sequence-classification")
    ids, labels = _data()
    qat = mixq.prepare_qat(model, example_inputs={"input_ids": ids[:2]}, freeze_observers_after=2)
    assert qat.classifier.float_output
    assert "float output" in {r.name: r.detail for r in qat.mixq_qat_plan.layers}["classifier"]
    torch.manual_seed(0)
    opt = torch.optim.Adam(qat.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        rows = slice((step % 8) * 8, (step % 8) * 8 + 8)
        loss = qat(input_ids=ids[rows], labels=labels[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert len(set(losses[2:])) == len(losses[2:])  # never stuck at one value
    assert sum(losses[-8:]) / 8 < sum(losses[2:10]) / 8 - 0.1  # still learning after the freeze
    qmodel = mixq.convert(qat.eval())
    assert "float output" in {r.name: r.detail for r in qmodel.mixq_summary.layers}["classifier"]
    with torch.no_grad():
        logits = qmodel(input_ids=ids).logits
        assert torch.equal(logits, qat(input_ids=ids).logits)
    assert logits.unique().numel() > 100  # not a handful of uint8 levels


@pytest.mark.parametrize("task", ["question-answering", "base"])
def test_split_logits_and_the_pooler_stay_float_as_in_static_graph_mode(task):
    model, example = build(task)
    qat = mixq.prepare_qat(model, example_inputs=example)
    floats = {n for n, m in qat.named_modules() if getattr(m, "float_output", False)}
    assert ({"qa_outputs"} if task == "question-answering" else {"pooler.dense"}) <= floats
    # graph mode (torch.export) also leaves float the Linear outputs no integer kernel reads, as static does
    ptq = mixq.quantize(model, "static", calib_data=[example], progress=False)
    assert floats == {n for n, m in ptq.named_modules() if isinstance(m, QuantizedLinear) and m.y_scale is None}


def test_a_model_output_read_by_another_layer_stays_fake_quantized():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features, self.head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            f = self.features(x)
            return f, self.head(f)

    qat = mixq.prepare_qat(Two(), example_inputs=torch.randn(2, 4))
    assert qat.head.float_output and not qat.features.float_output


def test_float_outputs_false_fake_quantizes_the_logits_too():
    model, example = build("sequence-classification")
    qat = mixq.prepare_qat(model, example_inputs=example, float_outputs=False)
    assert not qat.classifier.float_output and qat.mixq_qat.float_outputs is False
    assert mixq.QATConfig.from_dict(qat.mixq_qat.to_dict()) == qat.mixq_qat
