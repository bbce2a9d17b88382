"""keep_fp32 overrides: selected modules compute and return float32 inside autocast, the rest 16-bit."""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

import mixq.amp as amp


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16))
        self.body_norm = nn.LayerNorm(16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.body_norm(self.body(x))))


def _output_dtypes(model: nn.Module, mp: amp.MixedPrecision) -> dict[str, torch.dtype]:
    seen: dict[str, torch.dtype] = {}
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: seen.__setitem__(n, out.dtype))
        for n, m in model.named_modules()
        if n
    ]
    with mp.autocast():
        seen["<model>"] = model(torch.randn(3, 8)).dtype
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_selected_modules_are_fp32_and_others_16bit(precision):
    model = Net()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), precision, keep_fp32=["head"])
    low = torch.float16 if precision == "fp16" else torch.bfloat16
    dtypes = _output_dtypes(model, mp)
    assert dtypes["head"] == torch.float32
    assert dtypes["body_norm"] == torch.float32, "norms are kept in fp32 by default"
    assert dtypes["body.0"] == dtypes["body.2"] == dtypes["mid"] == low
    assert dtypes["<model>"] == torch.float32, "the policy's output dtype"
    assert mp.keep_fp32 == {"body_norm": "type LayerNorm", "head": "pattern 'head'"}


def test_patterns_and_types_select_subtrees():
    model = Net()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "bf16", keep_fp32=["bod*", nn.GELU])
    assert set(mp.keep_fp32) == {"body", "body_norm"}, "children of a selected module are not wrapped again"
    dtypes = _output_dtypes(model, mp)
    assert dtypes["body.0"] == dtypes["body.2"] == torch.float32
    assert dtypes["mid"] == torch.bfloat16


def test_overrides_are_inert_outside_autocast_and_removable():
    model = Net()
    x = torch.randn(2, 8)
    ref = model(x)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp16", keep_fp32=["head"])
    torch.testing.assert_close(model(x), ref, atol=0, rtol=0)
    clone = copy.deepcopy(model)
    assert clone.head.forward.original.__self__ is clone.head, "deepcopy must not call the original module"
    mp.remove()
    assert "forward" not in model.head.__dict__
    with mp.autocast():
        assert model(x).dtype == torch.float16


def test_bad_keep_fp32_entries():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="match no module"):
        amp.MixedPrecision(model, opt, "fp16", keep_fp32=["haed"])
    with pytest.raises(TypeError, match="name patterns"):
        amp.MixedPrecision(model, opt, "fp16", keep_fp32=[3])


@dataclasses.dataclass
class _Extra:
    hidden: torch.Tensor
    note: str


_Out = collections.namedtuple("_Out", "logits extra")


class _Both(nn.Module):
    """Returns a namedtuple holding a dataclass, as structured model outputs do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Any:
        y = self.fc(x)
        return _Out(logits=y, extra=_Extra(hidden=y * 2, note="n"))


def test_output_cast_keeps_namedtuples_and_dataclasses():
    model = _Both()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "bf16")
    with mp.autocast():
        out = model(torch.randn(2, 4))
    assert type(out) is _Out and type(out.extra) is _Extra and out.extra.note == "n"
    assert out.logits.dtype == out.extra.hidden.dtype == torch.float32
