"""What ``export_tflite`` takes as example inputs, refused up front in one line when it cannot use them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * mask


@pytest.mark.parametrize("bad", [{"x": torch.randn(1, 8), "mask": 1.0}, {"not a name": torch.randn(1, 8)}, {}],
                         ids=["non-tensor", "non-identifier", "empty"])
def test_dicts_the_file_signature_cannot_name_are_refused(tmp_path, bad):
    with pytest.raises(TypeError, match="dict of named tensors") as info:
        mixq.export_tflite(TwoInputs().eval(), bad, tmp_path / "m.tflite")
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", [{"nhwc": True}, {"io_dtype": "int8"}])
def test_dict_inputs_with_positional_only_options_are_refused_before_converting(tmp_path, option):
    example = {"x": torch.randn(1, 8), "mask": torch.ones(1, 4)}
    with pytest.raises(ValueError, match="positional example inputs"):
        mixq.export_tflite(TwoInputs().eval(), example, tmp_path / "m.tflite", **option)
    assert not list(tmp_path.iterdir())


def test_dict_inputs_name_the_file_inputs(tmp_path):
    torch.manual_seed(0)
    example = {"x": torch.randn(1, 8), "mask": torch.ones(1, 4)}
    path = mixq.export_tflite(TwoInputs().eval(), example, tmp_path / "m.tflite")
    assert [name.split()[0] for name in mixq.inspect_tflite(path).inputs] == ["serving_default_x",
                                                                              "serving_default_mask"]


def test_a_model_that_fails_on_the_example_is_refused_in_one_line(tmp_path):
    model = nn.Sequential(nn.Linear(8, 4)).train()
    with pytest.raises(mixq.ExportError, match="does not run on the example inputs") as info:
        mixq.export_tflite(model, torch.randn(1, 5), tmp_path / "m.tflite")
    assert "\n" not in str(info.value)
    assert model.training and not list(tmp_path.iterdir())
