"""The opt-in numerics report: underflow fractions, activation range, first inf/NaN layer, recommendations."""

from __future__ import annotations

import torch
from torch import nn

import mixq.amp as amp


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))


def _step(mp: amp.MixedPrecision, model: nn.Module, loss_mult: float = 1e-3, check=None) -> bool:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(mp.stats.steps))
    with mp.autocast():
        if check is not None:
            check()
        loss = model(x).float().mean() * loss_mult
    mp.backward(loss)
    return mp.step()


def test_underflow_fractions_match_a_direct_count():
    model = _net()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=1e-3), "fp16", diagnostics=True)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    with mp.autocast():
        loss = model(x).float().mean() * 1e-7
    mp.backward(loss)
    true = torch.cat([model[2].weight.grad.flatten(), model[2].bias.grad.flatten()]) / mp.scale
    lost = lambda s: (((true * s).half() == 0) & (true != 0)).sum().item() / true.numel()  # noqa: E731
    mp.step()
    layer = next(x for x in mp.numerics_report().samples[0].layers if x.name == "2")
    assert layer.underflow_unscaled == lost(1.0) > 0.05
    assert layer.underflow_scaled == lost(2.0**16) < layer.underflow_unscaled
    report = mp.numerics_report()
    assert "Without loss scaling fp16 would flush gradients of" in "\n".join(report.recommendations())
    assert "| 2 | 1056 |" in report.to_markdown()


def test_overflowing_activation_is_traced_to_its_layer():
    model = _net()
    with torch.no_grad():
        model[2].weight.mul_(1e5)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=1e-3), "fp16", diagnostics=True)
    assert _step(mp, model) is False, "an inf activation in fp16 must skip the step"
    sample = mp.numerics_report().samples[0]
    assert sample.first_nonfinite_activation == "2"
    assert sample.first_nonfinite_grad is not None
    text = mp.numerics_report().to_markdown()
    assert "'2' is the first layer whose output is inf/NaN" in text and "keep_fp32=['2']" in text

    # the same model in bf16: finite, but the report says the activations exceed fp16's range
    model = _net()
    with torch.no_grad():
        model[2].weight.mul_(1e5)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=1e-3), "bf16", diagnostics=True)
    assert _step(mp, model) is True
    peaks = mp.numerics_report().peak_activation()
    assert peaks["2"] > amp.diagnostics.FP16_MAX > peaks["0"]
    assert any("exceed fp16's max" in r and "'2'" in r for r in mp.numerics_report().recommendations())


def test_sampling_schedule_and_no_hooks_when_off_or_unsampled():
    model = _net()
    hooked = lambda: any(m._forward_hooks for m in model.modules() if m is not model)  # noqa: E731
    cfg = amp.NumericsConfig(every=3, max_samples=2)
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=1e-3), "fp16", diagnostics=cfg)
    seen = []
    for _ in range(9):
        _step(mp, model, check=lambda: seen.append(hooked()))
        mp.zero_grad()
        assert not hooked()
    assert seen == [True, False, False, True, False, False, False, False, False]
    assert [s.step for s in mp.numerics_report().samples] == [0, 3]

    model = _net()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=1e-3), "fp16")
    seen = []
    _step(mp, model, check=lambda: seen.append(hooked()))
    assert seen == [False] and mp._numerics is None
    assert "AmpStats(scale=65536, steps=1" in repr(mp.stats) and "| 1 | 1 | 0 |" in mp.stats.summary()
