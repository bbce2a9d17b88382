"""A step with non-finite gradients is never applied, in every precision and scaling mode; a run that keeps
producing them stops with an error naming the first bad layer; a bad checkpoint changes nothing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import mixq.amp as amp

# (precision, loss_scale, master_weights, max_grad_norm): every precision x scaling mode, with and without the
# optional parts of the step (clipping, fp32 masters) that have their own code paths.
MODES = {
    "fp16-dynamic": ("fp16", "dynamic", False, None),
    "fp16-static": ("fp16", 1024.0, False, None),
    "fp16-none": ("fp16", "none", False, None),
    "fp16-dynamic-clip-master": ("fp16", "dynamic", True, 1.0),
    "fp16-static-clip": ("fp16", 8.0, False, 1.0),
    "bf16": ("bf16", "dynamic", False, None),
    "bf16-clip": ("bf16", "dynamic", False, 1.0),
    "bf16-master": ("bf16", "dynamic", True, None),
    "fp32": ("fp32", "dynamic", False, None),
    "fp32-clip": ("fp32", "dynamic", False, 1.0),
}


def _build(mode: str, **kw):
    precision, loss_scale, master, clip = MODES[mode]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mp = amp.MixedPrecision(model, opt, precision, loss_scale=loss_scale, master_weights=master,
                            max_grad_norm=clip, **kw)
    return model, opt, mp


def _backward(mp, model, poison: str | None = None, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 8, generator=g)
    with mp.autocast():
        loss = model(x).float().pow(2).mean()
    if poison == "nan-loss":
        loss = loss * float("nan")
    mp.backward(loss)
    if poison == "inf-grad":  # one element of one parameter's gradient (the master's .grad is filled in step())
        model[2].weight.grad[0, 0] = float("inf")


def _state(model, opt, mp):
    params = [p.detach().clone() for p in model.parameters()]
    masters = [m.detach().clone() for _, m in mp.master.pairs] if mp.master is not None else []
    return params, masters, copy.deepcopy(opt.state_dict()["state"])


def _identical(a, b) -> bool:
    def same(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y) or (x.isnan() == y.isnan()).all() and torch.equal(x.nan_to_num(), y.nan_to_num())
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y, strict=True))
        return x == y
    return same(a, b)


@pytest.mark.parametrize("poison", ["nan-loss", "inf-grad"])
@pytest.mark.parametrize("mode", list(MODES))
def test_a_non_finite_step_is_never_applied(mode, poison):
    model, opt, mp = _build(mode)
    _backward(mp, model)
    assert mp.step() is True  # one clean step first, so the optimizer has state to protect
    mp.zero_grad()
    before = _state(model, opt, mp)
    _backward(mp, model, poison)
    assert mp.step() is False
    assert _identical(_state(model, opt, mp), before), "weights or optimizer state changed on a skipped step"
    assert mp.stats.skipped_at == [1] and mp.stats.skipped_steps == 1 and mp.stats.consecutive_skips == 1
    assert all(math.isfinite(float(p.detach().float().sum())) for p in model.parameters())
    mp.zero_grad()
    _backward(mp, model, seed=1)
    assert mp.step() is True and mp.stats.consecutive_skips == 0  # training continues after a skip


@pytest.mark.parametrize("mode", ["fp16-static", "bf16", "fp32-clip", "fp16-dynamic-clip-master"])
def test_consecutive_skips_raise_naming_the_first_bad_layer(mode):
    model, _, mp = _build(mode, max_consecutive_skips=3)
    for i in range(3):
        _backward(mp, model, "inf-grad")
        if i < 2:
            assert mp.step() is False
            mp.zero_grad()
    with pytest.raises(amp.NonFiniteGradientsError, match="3 optimizer steps in a row.*first layer with "
                                                          "non-finite gradients is '2'") as info:
        mp.step()
    assert info.value.first_bad_layer == "2" and info.value.skipped == 3 and mp.stats.skipped_steps == 3


def test_max_consecutive_skips_is_validated():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp32", max_consecutive_skips=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp32", max_grad_norm=float("nan"))


def _bad_states(good):
    def edit(path, value):
        state = copy.deepcopy(good)
        node = state
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return state

    return {
        "only a version": ({"version": 1}, "missing 'policy'"),
        "not a dict": ([1, 2], "state_dict\\(\\) returns"),
        "wrong version": (edit(["version"], 7), "version 7"),
        "nan scaler scale": (edit(["scaler", "scale"], float("nan")), "scaler scale"),
        "negative tracker": (edit(["scaler", "_growth_tracker"], -1), "_growth_tracker"),
        "nan stats scale": (edit(["stats", "scale"], float("nan")), "stats scale"),
        "stats missing steps": (edit(["stats", "steps"], KeyError), "'stats' is malformed"),
        "loss scale unknown key": (edit(["loss_scale", "bogus"], 1), "invalid MixedPrecision state"),
        "loss scale nan init": (edit(["loss_scale", "init_scale"], float("nan")), "init_scale"),
        "loss scale nan growth": (edit(["loss_scale", "growth_factor"], float("nan")), "growth_factor"),
        "loss scale inf floor": (edit(["loss_scale", "min_scale"], float("inf")), "min_scale"),
        "micro batches out of range": (edit(["micro_batches"], 5), "micro_batches"),
        "masters missing": (edit(["master_weights"], None), "disagree on master_weights"),
        "master wrong shape": (edit(["master_weights", 0], torch.zeros(3)), "master weight 0 has shape"),
        "master nan": (edit(["master_weights", 1], torch.full_like(good["master_weights"][1], float("nan"))),
                       "inf/NaN"),
        "other policy": (edit(["policy", "compute_dtype"], "bf16"), "policy"),
    }


def test_a_bad_state_is_refused_and_changes_nothing():
    model, opt, mp = _build("fp16-dynamic-clip-master")
    for seed in range(3):
        _backward(mp, model, seed=seed)
        mp.step()
        mp.zero_grad()
    good = mp.state_dict()
    _backward(mp, model, "inf-grad")
    mp.step()  # now the live state differs from `good`
    mp.zero_grad()
    live = copy.deepcopy(mp.state_dict())
    for name, (state, message) in _bad_states(good).items():
        with pytest.raises((ValueError, TypeError), match=message):
            mp.load_state_dict(state)
        assert _identical(mp.state_dict(), live), f"{name}: a refused state changed the live one"
    mp.load_state_dict(good)
    assert mp.stats.steps == 3 and mp.scale == good["stats"]["scale"]
