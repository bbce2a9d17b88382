"""The optimizer step: inf/NaN skips, the scale schedule, clipping, accumulation, two optimizers."""

from __future__ import annotations

import copy

import pytest
import torch
from amp_helpers import make_mlp
from torch import nn

import mixq.amp as amp


def _batch(seed: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)


def _forward_backward(mp: amp.MixedPrecision, model: nn.Module, seed: int) -> None:
    x, y = _batch(seed)
    with mp.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    mp.backward(loss)


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_injected_inf_skips_exactly_that_step():
    model = make_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mp = amp.MixedPrecision(model, opt, precision="fp16")
    results, scales = [], []
    for step in range(5):
        _forward_backward(mp, model, step)
        before, adam_state = _snapshot(model), copy.deepcopy(opt.state_dict()["state"])
        if step == 2:
            model[3].weight.grad[0, 0] = float("inf")
        results.append(mp.step())
        scales.append(mp.scale)
        if step == 2:
            for b, p in zip(before, model.parameters(), strict=True):
                torch.testing.assert_close(p, b, atol=0, rtol=0)
            assert opt.state_dict()["state"].keys() == adam_state.keys()
            state = opt.state_dict()["state"]
            assert all(torch.equal(state[k]["step"], v["step"]) for k, v in adam_state.items())
        else:
            assert any(not torch.equal(p, b) for b, p in zip(before, model.parameters(), strict=True))
        mp.zero_grad()
    assert results == [True, True, False, True, True]
    assert scales == [2.0**16, 2.0**16, 2.0**15, 2.0**15, 2.0**15]
    assert mp.stats.skipped_at == [2] and mp.stats.skipped_steps == 1 and mp.stats.steps == 5
    assert mp.stats.scale_history == scales


def test_dynamic_scale_grows_after_interval_and_static_stays():
    model = make_mlp()
    spec = amp.LossScale(init_scale=256.0, growth_interval=3)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.01), "fp16", loss_scale=spec)
    for step in range(7):
        _forward_backward(mp, model, step)
        mp.step()
        mp.zero_grad()
    assert mp.stats.scale_history == [256.0, 256.0, 512.0, 512.0, 512.0, 1024.0, 1024.0]

    model = make_mlp()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.01), "fp16", loss_scale=128.0)
    _forward_backward(mp, model, 0)
    model[0].bias.grad[0] = float("nan")
    assert mp.step() is False and mp.scale == 128.0


def test_scale_collapse_names_the_first_bad_layer():
    model = make_mlp()
    spec = amp.LossScale(init_scale=2.0**16, min_scale=2.0**14)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.01), "fp16", loss_scale=spec)
    with pytest.raises(amp.LossScaleCollapseError, match="'3'") as info:
        for step in range(5):
            _forward_backward(mp, model, step)
            model[3].weight.grad.fill_(float("inf"))
            model[5].weight.grad.fill_(float("inf"))
            mp.step()
            mp.zero_grad()
    assert info.value.first_bad_layer == "3" and info.value.scale == 2.0**13
    assert mp.stats.skipped_at == [0, 1, 2]


def test_matches_hand_written_autocast_gradscaler_loop_with_clipping():
    ref_model, model = make_mlp(norm=False), make_mlp(norm=False)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    mp = amp.MixedPrecision(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        "fp16",
        max_grad_norm=0.5,
        loss_scale=amp.LossScale(growth_interval=2),
    )
    for step in range(6):
        x, y = _batch(step)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(ref_model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(ref_opt)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
        scaler.step(ref_opt)
        scaler.update()
        ref_opt.zero_grad()
        _forward_backward(mp, model, step)
        mp.step()
        mp.zero_grad()
        assert mp.stats.history[-1].grad_norm == pytest.approx(ref_norm.item(), rel=0, abs=0)
        assert ref_norm.item() > 0.5, "clipping must be active for this test to mean anything"
    assert mp.scale == scaler.get_scale() == 2.0**19
    for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_accumulation_equals_one_large_batch():
    big, acc = make_mlp(norm=False), make_mlp(norm=False)
    mp_big = amp.MixedPrecision(big, torch.optim.SGD(big.parameters(), lr=0.5), "fp32")
    mp_acc = amp.MixedPrecision(acc, torch.optim.SGD(acc.parameters(), lr=0.5), "fp32", accumulation_steps=4)
    x, y = _batch(0, n=64)
    with mp_big.autocast():
        loss = nn.functional.cross_entropy(big(x), y)
    mp_big.backward(loss)
    assert mp_big.step() is True
    applied = []
    for i in range(4):
        with mp_acc.autocast():
            loss = nn.functional.cross_entropy(acc(x[16 * i : 16 * (i + 1)]), y[16 * i : 16 * (i + 1)])
        mp_acc.backward(loss)
        applied.append(mp_acc.step())
        mp_acc.zero_grad()  # a no-op until the accumulation is complete
    assert applied == [False, False, False, True] and mp_acc.stats.steps == 1
    for a, b in zip(big.parameters(), acc.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in acc.parameters())


def test_two_optimizers_skip_together_and_share_one_scale():
    model = make_mlp()
    body = torch.optim.SGD([p for m in list(model)[:-1] for p in m.parameters()], lr=0.1)
    head = torch.optim.Adam(model[5].parameters(), lr=0.01)
    mp = amp.MixedPrecision(model, [body, head], "fp16")
    _forward_backward(mp, model, 0)
    before = _snapshot(model)
    model[5].bias.grad[0] = float("inf")  # only the head optimizer sees it
    assert mp.step() is False
    for b, p in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(p, b, atol=0, rtol=0)
    assert mp.scale == 2.0**15
    mp.zero_grad()
    _forward_backward(mp, model, 1)
    assert mp.step() is True
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
