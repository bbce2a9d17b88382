"""LSQ fake quantization: the same forward values as ``fake_quantize``, LSQ's scale gradient, positive scales."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.quant.primitives import MIN_SCALE, fake_quantize, fake_quantize_lsq

ZP8 = torch.tensor(0, dtype=torch.int8)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.001, 2.0), st.integers(2, 8))
def test_forward_is_bit_identical_to_fake_quantize(seed, scale, bits):
    x = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * 3
    qmax = 2 ** (bits - 1) - 1
    s = torch.tensor(scale)
    assert torch.equal(fake_quantize_lsq(x, s, ZP8, None, -qmax, qmax), fake_quantize(x, s, ZP8, None, -qmax, qmax))


def test_scale_gradient_is_lsq():
    x = torch.tensor([0.26, -0.74, 1.1, 5.0, -9.0])  # two inside, one inside near the edge, two saturated
    s = torch.tensor(0.5, requires_grad=True)
    fake_quantize_lsq(x, s, ZP8, None, -3, 3).sum().backward()
    v = x / 0.5
    inside = torch.tensor([True, True, True, False, False])
    expected_terms = torch.where(inside, torch.round(v) - v, torch.tensor([0.0, 0, 0, 3, -3]))
    grad_scale = 1 / (5 * 3) ** 0.5
    torch.testing.assert_close(s.grad, expected_terms.sum() * grad_scale)


def test_input_gradient_is_straight_through_and_zero_when_saturated():
    x = torch.tensor([0.3, 2.0, -2.0], requires_grad=True)
    fake_quantize_lsq(x, torch.tensor(0.5, requires_grad=True), ZP8, None, -3, 3).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]


def test_per_channel_scales_get_one_gradient_per_channel():
    w = torch.randn(4, 3, 3, 3)
    s = torch.full((4,), 0.1, requires_grad=True)
    zp = torch.zeros(4, dtype=torch.int8)
    fake_quantize_lsq(w, s, zp, 0, -7, 7).pow(2).sum().backward()
    assert s.grad.shape == (4,) and bool((s.grad != 0).all())


def test_a_negative_learned_scale_is_clamped_positive():
    s = torch.tensor(-0.5, requires_grad=True)
    y = fake_quantize_lsq(torch.tensor([1e-9, 3e-8]), s, ZP8, None, -127, 127)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.tensor([0.0, 3 * MIN_SCALE]))
