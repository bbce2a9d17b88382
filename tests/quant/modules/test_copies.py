"""``plain_copy``: a layer's variant that shares its tensors, takes new ones without touching the layer, and
works on parametrized layers (``weight_norm``), which ``copy.copy`` refuses."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from mixq.quant.adaround import on_grid
from mixq.quant.modules.copies import plain_copy
from mixq.quant.spec import DEFAULT_WEIGHT
from mixq.quant.weights import quantize_weight


def _weight_normed() -> nn.Conv1d:
    torch.manual_seed(0)
    return nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 3, padding=1), dim=0)


def test_a_plain_layers_copy_shares_its_tensors_and_takes_new_ones_alone():
    conv = nn.Conv2d(3, 4, 3)
    moved = plain_copy(conv)
    assert type(moved) is nn.Conv2d and moved.weight is conv.weight
    moved.bias = nn.Parameter(torch.zeros(4))
    assert not torch.equal(conv.bias, moved.bias)


def test_a_parametrized_layer_copies_as_its_own_class_computing_the_same():
    conv = _weight_normed()
    with pytest.raises(RuntimeError, match="parametrized"):
        copy.copy(conv)  # what the callers used before
    moved = plain_copy(conv)
    assert type(moved) is nn.Conv1d and not parametrize.is_parametrized(moved)
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(moved(x), conv(x), rtol=0, atol=0)
    moved.weight = nn.Parameter(torch.zeros_like(conv.weight))
    assert parametrize.is_parametrized(conv, "weight") and conv.weight.abs().sum() > 0  # untouched


def test_adaround_puts_a_parametrized_weight_on_its_grid():
    conv = _weight_normed()
    codes, scale = quantize_weight(conv.weight.detach(), DEFAULT_WEIGHT, axis=0)
    moved = on_grid(conv, codes, scale)
    again, _ = quantize_weight(moved.weight, DEFAULT_WEIGHT, axis=0)
    assert torch.equal(again, codes) and parametrize.is_parametrized(conv, "weight")
