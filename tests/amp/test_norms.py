"""Norm layers without a float32 override only where their 16-bit kernel is checked to compute in float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixq.amp as amp
from mixq.amp import norms


class LowAccumNorm(nn.Module):
    """A stand-in for a norm kernel that accumulates in 16-bit: mean and variance rounded to the input dtype."""


def _low_accum(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stats: list[torch.Tensor]) -> torch.Tensor:
    mean = x.float().mean(dim=(0, 2, 3), keepdim=True).to(x.dtype)
    centred = x - mean  # in 16-bit: mean ~100 has a step of 0.5 in bf16
    var = centred.float().pow(2).mean(dim=(0, 2, 3), keepdim=True)
    y = (centred.float() / (var + 1e-5).sqrt()).to(x.dtype)
    return y * w.view(1, -1, 1, 1).to(x.dtype) + b.view(1, -1, 1, 1).to(x.dtype)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                         nn.Flatten(), nn.LayerNorm(8 * 6 * 6), nn.Linear(8 * 6 * 6, 4))


@pytest.fixture
def exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this torch's BatchNorm/GroupNorm kernels passed the probe, whatever the machine."""
    monkeypatch.setattr(norms, "exact_in", lambda kind, device, dtype: kind in norms.PROBED)


def test_the_probe_rejects_a_kernel_that_accumulates_in_16_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(norms.PROBED, LowAccumNorm, (_low_accum, False))
    assert not norms.exact_in(LowAccumNorm, "cpu", torch.bfloat16)


def test_the_probe_rejects_an_inexact_parameter_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    def inexact_weight_grad(x, w, b, stats):  # the output is exact; in 16-bit the weight's gradient is 0.1% off
        if x.dtype != torch.float32:
            w.register_hook(lambda grad: grad * 1.001)
        return F.batch_norm(x, None, None, w, b, training=True)

    monkeypatch.setitem(norms.PROBED, LowAccumNorm, (inexact_weight_grad, False))
    assert not norms.exact_in(LowAccumNorm, "cpu", torch.bfloat16)


def test_a_native_norm_equals_the_fp32_override_rounded_once() -> None:
    """On this machine's kernels: whatever the probe says, its verdict matches a real module's training step."""
    for kind, module in [(nn.BatchNorm2d, nn.BatchNorm2d(8)), (nn.GroupNorm, nn.GroupNorm(4, 8))]:
        x = (torch.randn(32, 8, 10, 10) * 5 + 50).bfloat16()
        ref, low = copy.deepcopy(module).train(), copy.deepcopy(module).train()
        out_ref, out_low = ref(x.float()), low(x)
        close = torch.allclose(out_low.float(), out_ref, rtol=2 * torch.finfo(torch.bfloat16).eps, atol=1e-6)
        assert norms.exact_in(kind, "cpu", torch.bfloat16) == close, kind.__name__


def test_mixed_precision_lets_exact_norms_go_without_the_override(exact: None) -> None:
    model = _cnn()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16")
    assert set(mp.native_norms) == {"1", "4"} and "runs in bf16" in mp.native_norms["1"]
    assert "7" in mp.keep_fp32  # LayerNorm: not probed, keeps its override
    seen = {}
    for name in ("1", "4", "7"):
        model.get_submodule(name).register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, o.dtype))
    with mp.autocast():
        loss = model(torch.randn(2, 3, 6, 6)).float().sum()
    mp.backward(loss)
    assert mp.step()
    assert seen == {"1": torch.bfloat16, "4": torch.bfloat16, "7": torch.float32}
    assert model[1].running_mean.dtype == torch.float32


def test_a_norm_the_user_names_keeps_its_override(exact: None) -> None:
    for rule in (nn.BatchNorm2d, "1"):
        model = _cnn()
        mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16",
                                keep_fp32=[rule])
        assert "1" in mp.keep_fp32 and "1" not in mp.native_norms


def test_a_norm_failing_the_probe_keeps_its_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norms, "exact_in", lambda kind, device, dtype: False)
    model = _cnn()
    mp = amp.MixedPrecision(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bf16")
    assert not mp.native_norms and {"1", "4", "7"} <= set(mp.keep_fp32)


def test_master_weights_keep_native_norms_parameters_in_fp32(exact: None) -> None:
    model = _cnn()
    mp = amp.MixedPrecision(model, torch.optim.AdamW(model.parameters(), lr=1e-3), precision="bf16",
                            master_weights=True)
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].weight.dtype == torch.float32 and model[4].weight.dtype == torch.float32
    with mp.autocast():
        loss = model(torch.randn(2, 3, 6, 6)).float().sum()
    mp.backward(loss)
    assert mp.step()
    assert model[1].running_var.dtype == torch.float32
