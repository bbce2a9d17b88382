"""``mixq.quant.graft``: graph mode's quantized graph runs under the model's own class, so the result keeps
``isinstance``, ``config``, the class's methods and ``save_pretrained``; ``state_dict`` names and copies work as for
any module; and a module captured on keyword inputs (``mixq.quant.capture``) is quantized too."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import mixq


class Residual(nn.Module):
    """torch.fx traces it: static mode quantizes its residual add in graph mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)
        self.labels = ("a", "b", "c")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x + self.conv2(torch.relu(self.conv1(x))))
        return self.head(x.mean((2, 3)))

    def predict(self, x: torch.Tensor) -> list[str]:
        """A method of the user's class that calls forward."""
        return [self.labels[i] for i in self(x).argmax(1).tolist()]


def _calib(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 4, 8, 8, generator=g) for _ in range(n)]


def test_a_graph_mode_model_keeps_its_class_methods_and_attributes():
    torch.manual_seed(0)
    model = Residual().eval()
    qmodel = mixq.quantize(model, "static", calib_data=_calib(), progress=False)
    assert isinstance(qmodel, Residual) and type(qmodel) is not Residual
    assert isinstance(qmodel.graph, fx.Graph) and "graph mode (torch.fx)" in str(qmodel.mixq_summary)
    assert any("subclass of the model's own Residual" in n for n in qmodel.mixq_summary.notes)
    x = _calib(1)[0]
    with torch.no_grad():
        y, ref = qmodel(x), model(x)
        assert qmodel.predict(x) == [qmodel.labels[i] for i in y.argmax(1).tolist()]  # the method runs the graph
    assert (y - ref).norm() / ref.norm() < 0.05
    assert type(qmodel.conv2).__name__ == "QuantizedConv" and qmodel.labels == model.labels
    assert type(model) is Residual and isinstance(model.conv2, nn.Conv2d)  # the original is untouched


def test_the_grafted_model_copies_and_reloads_its_state():
    torch.manual_seed(0)
    qmodel = mixq.quantize(Residual().eval(), "static", calib_data=_calib(), progress=False)
    twin = copy.deepcopy(qmodel)
    x = _calib(1)[0]
    with torch.no_grad():
        assert torch.equal(twin(x), qmodel(x))
    state = qmodel.state_dict()
    assert "conv2.weight_int8" in state or any(k.startswith("conv2.") for k in state)
    twin.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(twin(x), qmodel(x))


def test_a_hugging_face_encoder_stays_its_class_with_its_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, 64, (2, 8), generator=g)} for _ in range(3)]
    qmodel = mixq.quantize(bert, "static", calib_data=calib, progress=False)
    assert isinstance(qmodel, transformers.BertForSequenceClassification)
    assert qmodel.config.num_labels == 2 and "graph mode (torch.export)" in str(qmodel.mixq_summary)
    out = qmodel(**calib[0])
    assert type(out).__name__ == "SequenceClassifierOutput" and out.logits.shape == (2, 2)


class KeywordConv(nn.Module):
    """Computes with its own parameter (captured) and is called with keyword inputs only."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor, *, shift: torch.Tensor | None = None) -> torch.Tensor:
        y = F.conv2d(x, self.weight, padding=1)
        return y if shift is None else y + shift


class CallsByKeyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = KeywordConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x=x, shift=None)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_a_module_called_with_keyword_inputs_is_captured(mode):
    torch.manual_seed(0)
    model = CallsByKeyword().eval()
    qmodel = mixq.quantize(model, mode, example_inputs=_calib(1)[0], progress=False)
    assert any("inner (KeywordConv) captured with torch.export" in n for n in qmodel.mixq_summary.notes), \
        qmodel.mixq_summary.notes
    x = _calib(2)[1]
    with torch.no_grad():
        assert (qmodel(x) - model(x)).norm() / model(x).norm() < 0.05


def test_qat_from_a_grafted_static_model_keeps_its_shared_scales():
    torch.manual_seed(0)
    qmodel = mixq.quantize(Residual().eval(), "static", calib_data=_calib(), progress=False)
    qat = mixq.prepare_qat(qmodel)
    note = next(n for n in qat.mixq_qat_plan.notes if n.startswith("started from a calibrated static model"))
    assert "(0 inputs share" not in note, note  # graph mode's sharing survives under the user's class


def test_pickling_the_whole_grafted_model_fails_loudly():
    """Its class is made per model: it must never unpickle as the float class with a quantized state."""
    import io
    import pickle

    qmodel = mixq.quantize(Residual().eval(), "static", calib_data=_calib(), progress=False)
    with pytest.raises(pickle.PicklingError, match="QuantizedResidual"):
        torch.save(qmodel, io.BytesIO())


def test_a_call_binds_as_the_original_forward_binds_it():
    """Calibrated on keyword batches whose order is not the forward's, a positional call means what it means to
    the original model, or is refused in one line; before, ``q(ids, mask)`` fed the mask in as token types."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, type_vocab_size=2)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (2, 8), generator=g)
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    qmodel = mixq.quantize(bert, "static", calib_data=[{"input_ids": ids, "token_type_ids": types}], progress=False)
    with torch.no_grad():
        by_name = qmodel(input_ids=ids, token_type_ids=types).logits
        assert torch.equal(qmodel(ids, None, types).logits, by_name)  # forward(input_ids, attention_mask, types)
        assert torch.equal(qmodel(ids, token_type_ids=types, output_hidden_states=None).logits, by_name)
        with pytest.raises(TypeError, match="pass token_type_ids too"):
            qmodel(ids, torch.ones_like(ids))
        with pytest.raises(TypeError, match="without attention_mask: leave it out"):
            qmodel(ids, torch.ones_like(ids), types)
        with pytest.raises(TypeError, match="without output_hidden_states"):
            qmodel(ids, token_type_ids=types, output_hidden_states=True)
        with pytest.raises(TypeError, match="without token_types"):  # its forward takes **kwargs
            qmodel(ids, token_type_ids=types, token_types=types)


def test_a_positionally_captured_graph_takes_its_input_by_name_too():
    torch.manual_seed(0)
    model = Residual().eval()
    qmodel = mixq.quantize(model, "static", calib_data=_calib(), progress=False)
    x = _calib(1)[0]
    with torch.no_grad():
        assert torch.equal(qmodel(x=x), qmodel(x))
    with pytest.raises(TypeError, match="pass x too"):
        qmodel(None)
    with pytest.raises(TypeError, match=r"Residual.forward: .*unexpected keyword argument 'y'"):
        qmodel(x, y=x)
