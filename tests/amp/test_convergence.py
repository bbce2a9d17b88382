"""End-to-end: an MLP on digits trained in fp16 (loss scaling), bf16 and with master weights matches fp32."""

from __future__ import annotations

import pytest
import torch
from amp_helpers import train


@pytest.fixture(scope="module")
def fp32_accuracy(digits) -> float:
    model, mp, acc = train(digits, "fp32")
    assert mp.scale == 1.0 and mp.stats.skipped_steps == 0
    assert acc > 0.9, f"fp32 baseline only reached {acc:.3f}; the test set-up is broken"
    return acc


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_matches_fp32_accuracy(digits, fp32_accuracy, precision):
    model, mp, acc = train(digits, precision)
    assert abs(acc - fp32_accuracy) <= 0.01, f"{precision}: {acc:.4f} vs fp32 {fp32_accuracy:.4f}"
    if precision == "fp16":
        assert mp.scaler.is_enabled() and mp.stats.steps == 600
    else:
        assert not mp.scaler.is_enabled() and mp.scale == 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_master_weights_dtypes_and_convergence(digits, fp32_accuracy, precision):
    model, mp, acc = train(digits, precision, master_weights=True)
    low = torch.float16 if precision == "fp16" else torch.bfloat16
    linear_params = [p for m in model if isinstance(m, torch.nn.Linear) for p in m.parameters()]
    assert all(p.dtype == low for p in linear_params)
    assert all(p.dtype == torch.float32 for p in model[1].parameters()), "LayerNorm must stay fp32"
    opt_params = [p for g in mp.optimizers[0].param_groups for p in g["params"]]
    assert all(p.dtype == torch.float32 for p in opt_params)
    # the 16-bit weights are the rounded masters
    for p, master in mp.master.pairs:
        torch.testing.assert_close(p, master.to(low), atol=0, rtol=0)
    assert acc >= fp32_accuracy - 0.02, f"master weights {precision}: {acc:.4f} vs fp32 {fp32_accuracy:.4f}"
