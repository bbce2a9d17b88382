"""Bad input to ``export_tflite``: one line naming the problem, and nothing written or replaced."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.export import ExportError
from mixq.export.tflite import converter


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_missing_extra_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(converter, "_PACKAGES", ("mixq_test_no_such_package",))
    with pytest.raises(ImportError, match=r"pip install 'mixq\[litert\]'") as info:
        mixq.export_tflite(_mlp(), torch.randn(1, 8), tmp_path / "m.tflite")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


needs_litert = pytest.mark.skipif(not converter.litert_available(),
                                  reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")


class Erfinv(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.tanh(x))


class WithErfinv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.squash = Erfinv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.squash(self.fc(x))


@needs_litert
def test_op_litert_cannot_express_names_the_layer_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError) as info:
        mixq.export_tflite(WithErfinv().eval(), torch.randn(1, 8), target)
    message = str(info.value)
    assert "\n" not in message
    assert "layer 'squash' (Erfinv)" in message and "erfinv" in message
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]  # no temporary file left behind


@needs_litert
def test_a_weight_only_grid_litert_cannot_hold_is_named(tmp_path):
    qmodel = mixq.quantize(_mlp(), "weight_only", bits=4, group_size=16, symmetric=False)
    with pytest.raises(ExportError, match=r"layer '0' has zero points \(asymmetric grid\)"):
        mixq.export_tflite(qmodel, torch.randn(1, 8), tmp_path / "m.tflite")


@needs_litert
def test_one_mode_per_file(tmp_path):
    qmodel = mixq.quantize(_mlp(), "dynamic", overrides=[mixq.LayerOverride("2", "fp16")])
    with pytest.raises(ExportError, match="mixes dynamic_range .*float16"):
        mixq.export_tflite(qmodel, torch.randn(1, 8), tmp_path / "m.tflite")


@needs_litert
def test_integer_io_needs_a_full_integer_model(tmp_path):
    with pytest.raises(ValueError, match="needs a full-integer model"):
        mixq.export_tflite(mixq.quantize(_mlp(), "dynamic"), torch.randn(1, 8), tmp_path / "m.tflite",
                           io_dtype="int8")


@needs_litert
@pytest.mark.parametrize("kwargs, error, match", [
    ({"path": "m.onnx"}, ValueError, "should end in .tflite"),
    ({"path": "missing/m.tflite"}, FileNotFoundError, "does not exist"),
    ({"io_dtype": "int16"}, ValueError, "io_dtype must be one of"),
], ids=["suffix", "directory", "io_dtype"])
def test_bad_arguments_are_refused_before_converting(tmp_path, kwargs, error, match):
    path = tmp_path / kwargs.pop("path", "m.tflite")
    with pytest.raises(error, match=match):
        mixq.export_tflite(_mlp(), torch.randn(1, 8), path, **kwargs)


class WithUnusedLayer(nn.Module):
    """A layer the forward pass never calls (a pooler whose output a wrapper drops) is not in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class WithDroppedOutput(nn.Module):
    """A layer that runs but whose output nothing returns (all-MiniLM-L6-v2's pooler under a wrapper returning
    ``last_hidden_state``): the converter removes it, so it is not looked for either."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.pooler = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        self.pooler(torch.tanh(y))  # computed, then dropped
        return y


@needs_litert
@pytest.mark.parametrize("model_class", [WithUnusedLayer, WithDroppedOutput], ids=["never-called", "output-dropped"])
def test_a_dynamic_range_layer_missing_from_the_file_is_not_looked_for(tmp_path, model_class):
    qmodel = mixq.quantize(model_class().eval(), "dynamic")
    path = mixq.export_tflite(qmodel, torch.randn(1, 8), tmp_path / "m.tflite")
    fcs = [op for op in mixq.inspect_tflite(path).ops if op.op_type == "FULLY_CONNECTED"]
    assert [op.input_types[1] for op in fcs] == ["int8"]
