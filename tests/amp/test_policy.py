"""Policy parsing, serialisation and device resolution (including "auto")."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mixq.amp as amp
from mixq.amp import policy as policy_mod

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fp32", "p=f32,c=f32,o=f32"),
        ("fp16", "p=f32,c=f16,o=f32"),
        ("mixed_float16", "p=f32,c=f16,o=f32"),
        ("BF16", "p=f32,c=bf16,o=f32"),
        ("mixed_bfloat16", "p=f32,c=bf16,o=f32"),
        ("c=bf16", "p=f32,c=bf16,o=f32"),
        ("p=f16,c=f16,o=f32", "p=f16,c=f16,o=f32"),
        ("params=float32, compute=half, output=bfloat16", "p=f32,c=f16,o=bf16"),
    ],
)
def test_parse(text, expected):
    assert str(amp.Policy.parse(text)) == expected


@given(st.sampled_from(DTYPES), st.sampled_from(DTYPES))
def test_round_trips_through_str_and_dict(compute, output):
    for param in {torch.float32, compute}:
        p = amp.Policy(param, compute, output)
        assert amp.Policy.parse(str(p)) == p
        assert amp.Policy.from_dict(p.to_dict()) == p
        assert p.needs_loss_scaling == (compute == torch.float16)


@pytest.mark.parametrize(
    ("text", "match"),
    [("fp8", "unknown precision 'fp8'"), ("c=int8", "not a supported dtype"), ("x=f32", "unknown key 'x'")],
)
def test_bad_strings_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        amp.Policy.parse(text)


def test_policy_is_frozen_and_checks_param_dtype():
    p = amp.Policy.parse("fp16")
    with pytest.raises(AttributeError):
        p.compute_dtype = torch.bfloat16
    with pytest.raises(ValueError, match="must be float32 or equal compute_dtype"):
        amp.Policy(torch.bfloat16, torch.float16, torch.float32)
    with pytest.raises(ValueError, match="not supported"):
        amp.Policy(torch.float32, torch.float64, torch.float32)


def test_fp16_on_a_device_without_fp16_autocast_is_refused():
    with pytest.raises(amp.PrecisionUnsupportedError, match="not available on device 'meta'"):
        amp.resolve_policy("fp16", "meta")
    assert amp.resolve_policy("fp16", "cpu").policy.needs_loss_scaling


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_on_cuda_without_cuda_is_refused():
    with pytest.raises(amp.PrecisionUnsupportedError):
        amp.resolve_policy("fp16", "cuda")


@pytest.mark.parametrize(
    ("device", "bf16", "fp16", "expected"),
    [
        ("cpu", True, True, "bf16"),
        ("cpu", False, True, "fp32"),
        ("cuda", False, True, "fp16"),
        ("cuda", True, True, "bf16"),
    ],
)
def test_auto_picks_and_explains(monkeypatch, device, bf16, fp16, expected):
    monkeypatch.setattr(policy_mod, "native_bf16", lambda d: bf16)
    monkeypatch.setattr(policy_mod, "autocast_supports", lambda d, dt: fp16)
    choice = amp.resolve_policy("auto", device)
    assert choice.policy == amp.Policy.parse(expected)
    assert device in choice.reason.lower() or "CUDA" in choice.reason


def test_auto_on_this_machine_is_consistent_with_its_cpu():
    choice = amp.resolve_policy("auto", "cpu")
    assert (choice.policy.compute_dtype == torch.bfloat16) == policy_mod.native_bf16("cpu")


def test_loss_scale_spec():
    assert amp.LossScale.parse(1024).mode == "static"
    assert amp.LossScale.parse(None).mode == "none"
    assert amp.LossScale.from_dict(amp.LossScale().to_dict()) == amp.LossScale()
    with pytest.raises(ValueError, match="backoff_factor"):
        amp.LossScale(backoff_factor=1.0)
    with pytest.raises(ValueError, match="not understood"):
        amp.LossScale.parse("huge")
    with pytest.raises(TypeError):
        amp.LossScale.parse(True)
