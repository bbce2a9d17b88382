"""Degenerate models and data get one clear error or a reason in the summary, never a raw IndexError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq


@pytest.mark.filterwarnings("ignore:Initializing zero-element", "ignore:nothing in")
@pytest.mark.parametrize("mode", ["static", "dynamic", "weight_only", "fp16"])
def test_a_zero_sized_layer_stays_float_with_a_reason(mode):
    model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 4))
    x = torch.zeros(2, 0)
    q = mixq.quantize(model, mode, calib_data=[x] if mode == "static" else None, example_inputs=x, progress=False)
    assert "zero-sized layer" in str(q.mixq_summary)


def test_a_calibration_set_whose_only_batch_is_empty_is_refused():
    with pytest.raises(mixq.CalibrationError, match=r"batch 0 .* is empty \(0 samples\)"):
        mixq.quantize(nn.Sequential(nn.Linear(4, 4)), "static", calib_data=[torch.zeros(0, 4)], progress=False)


def test_a_batch_of_strings_is_refused():
    with pytest.raises(mixq.CalibrationError, match="batch 0 is a str"):
        mixq.quantize(nn.Sequential(nn.Linear(4, 4)), "static", calib_data=["abc"], progress=False)
