"""Property tests for the finiteness check: any model whose tensors are all finite passes; one NaN or +-inf
anywhere, in any parameter or persistent buffer, is refused naming exactly that tensor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixq.quant.finiteness import NonFiniteWeightsError, check_finite

SETTINGS = settings(max_examples=60, deadline=None)


def _model(widths: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.LayerNorm(b)]
    return nn.Sequential(*layers, nn.BatchNorm1d(widths[-1])).eval()


@SETTINGS
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), data=st.data(),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_one_bad_value_anywhere_is_named(widths, data, value):
    model = _model(widths)
    check_finite(model, "quantize")  # all finite: passes
    tensors = [(n, t) for n, t in model.state_dict(keep_vars=True).items() if t.is_floating_point()]
    name, tensor = tensors[data.draw(st.integers(0, len(tensors) - 1), label="tensor")]
    index = data.draw(st.integers(0, tensor.numel() - 1), label="index")
    with torch.no_grad():
        tensor.view(-1)[index] = value
    with pytest.raises(NonFiniteWeightsError, match=f"'{name}'"):
        check_finite(model, "quantize")
