"""A run resumed from state_dict() continues exactly like an uninterrupted one."""

from __future__ import annotations

import io

import pytest
import torch
from amp_helpers import make_mlp
from torch import nn

import mixq.amp as amp


def _build(master: bool):
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mp = amp.MixedPrecision(
        model, opt, "fp16", master_weights=master, loss_scale=amp.LossScale(init_scale=2.0**10, growth_interval=3)
    )
    return model, opt, mp


def _run(model, mp, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        mp.backward(loss)
        if step in (2, 7):
            next(p for p in model.parameters()).grad[0, 0] = float("nan")
        mp.step()
        mp.zero_grad()


@pytest.mark.parametrize("master", [False, True], ids=["plain", "master_weights"])
def test_resume_continues_identically(master):
    model, opt, mp = _build(master)
    _run(model, mp, range(0, 5))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "mp": mp.state_dict()}, buf)
    _run(model, mp, range(5, 10))

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2, opt2, mp2 = _build(master)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    mp2.load_state_dict(ckpt["mp"])
    assert mp2.scale == ckpt["mp"]["stats"]["scale"] and mp2.stats.steps == 5
    _run(model2, mp2, range(5, 10))

    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert mp2.stats.scale_history == mp.stats.scale_history
    assert mp2.stats.skipped_at == mp.stats.skipped_at == [2, 7]
    h = mp.stats.scale_history
    pairs = list(zip(h, h[1:], strict=False))
    assert any(b > a for a, b in pairs) and any(b < a for a, b in pairs), "the scale must grow and back off"


def test_load_refuses_a_different_policy():
    model = make_mlp()
    mp16 = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp16")
    model = make_mlp()
    mpbf = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "bf16")
    with pytest.raises(ValueError, match="saved with policy p=f32,c=f16,o=f32"):
        mpbf.load_state_dict(mp16.state_dict())
