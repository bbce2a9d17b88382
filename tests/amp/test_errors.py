"""Bad input gets a clear, actionable error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq.amp as amp


@pytest.fixture
def setup():
    model = nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_unknown_precision(setup):
    with pytest.raises(ValueError, match="unknown precision 'fp12'.*fp16, bf16, fp32, auto"):
        amp.MixedPrecision(*setup, precision="fp12")


def test_fp16_on_device_without_fp16_autocast(setup):
    with pytest.raises(amp.PrecisionUnsupportedError, match="precision='fp32'"):
        amp.MixedPrecision(*setup, precision="fp16", device="meta")


def test_step_without_backward(setup):
    mp = amp.MixedPrecision(*setup, precision="fp16")
    with pytest.raises(amp.StepOrderError, match="without backward"):
        mp.step()
    model = setup[0]
    with mp.autocast():
        loss = model(torch.randn(3, 4)).float().sum()
    mp.backward(loss)
    mp.step()
    with pytest.raises(amp.StepOrderError):
        mp.step()


def test_loss_must_be_a_scalar_tensor_with_grad(setup):
    model = setup[0]
    mp = amp.MixedPrecision(*setup, precision="bf16")
    with mp.autocast():
        out = model(torch.randn(3, 4)).float()
    with pytest.raises(ValueError, match=r"scalar, got shape \(3, 2\).*\.mean\(\)"):
        mp.backward(out)
    with pytest.raises(TypeError, match="torch.Tensor"):
        mp.backward(1.0)
    with pytest.raises(ValueError, match="does not require grad"):
        mp.backward(out.detach().sum())


def test_optimizer_params_not_in_model(setup):
    model, _ = setup
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"optimizer 1 holds 2 parameter\(s\) that are not in the model"):
        amp.MixedPrecision(model, [setup[1], torch.optim.SGD(other.parameters(), lr=0.1)], "fp16")
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        amp.MixedPrecision(model, "sgd", "fp16")


def test_other_bad_options(setup):
    with pytest.raises(ValueError, match="needs a 16-bit precision"):
        amp.MixedPrecision(*setup, precision="fp32", master_weights=True)
    with pytest.raises(ValueError, match="accumulation_steps"):
        amp.MixedPrecision(*setup, precision="fp16", accumulation_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        amp.MixedPrecision(*setup, precision="fp16", max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="nn.Module"):
        amp.MixedPrecision(object(), setup[1])
    with pytest.raises(ValueError, match="loss_scale=128.0 has no effect"):  # every option applies or is refused
        amp.MixedPrecision(*setup, precision="bf16", loss_scale=128.0)
