"""The primitives against ONNX Runtime (bit-exact) and their documented properties."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from mixq.quant.primitives import choose_qparams, dequantize, dynamic_qparams, fake_quantize, qrange, quantize

_ONNX_TYPES = {torch.uint8: TensorProto.UINT8, torch.int8: TensorProto.INT8}


def _run_onnx(op: str, x: np.ndarray, initializers: dict[str, np.ndarray], outputs: dict[str, int],
              x_type: int, **attrs) -> list[np.ndarray]:
    """Run the one-node model ``op(x, *initializers)`` in ONNX Runtime (CPU); ``y`` is shaped like x."""
    node = helper.make_node(op, ["x", *initializers], list(outputs), **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", x_type, list(x.shape))],
        [helper.make_tensor_value_info(name, elem_type, list(x.shape) if name == "y" else [])
         for name, elem_type in outputs.items()],
        [numpy_helper.from_array(v, name) for name, v in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _test_input(scale: torch.Tensor, zp: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Random values over (and beyond) the range plus exact ``k + 0.5`` rounding ties, shape (4, 3, 64)."""
    gen = torch.Generator().manual_seed(0)
    s = scale.reshape(1, -1, 1) if axis is not None else scale
    z = zp.to(torch.float32).reshape(1, -1, 1) if axis is not None else zp.to(torch.float32)
    q = torch.randint(-300, 300, (4, 3, 32), generator=gen).to(torch.float32)
    ties = (q - z + 0.5) * s  # exact in float32: s is a power of two or the division is exact enough to tie
    noise = (torch.rand(4, 3, 32, generator=gen) - 0.5) * 600 * s
    return torch.cat([ties, noise], dim=2)


CASES = [
    pytest.param(torch.uint8, None, id="uint8-per-tensor"),
    pytest.param(torch.int8, None, id="int8-per-tensor"),
    pytest.param(torch.uint8, 1, id="uint8-per-axis"),
    pytest.param(torch.int8, 1, id="int8-per-axis"),
]


def _params(dtype: torch.dtype, axis: int | None, power_of_two: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if axis is None:
        scale = torch.tensor(0.25 if power_of_two else 0.0173)
        zp = torch.tensor(131 if dtype == torch.uint8 else -3, dtype=dtype)
    else:
        scale = torch.tensor([0.5, 0.125, 2.0] if power_of_two else [0.0173, 0.31, 1.7])
        zp = torch.tensor([0, 128, 255] if dtype == torch.uint8 else [-128, 0, 5], dtype=dtype)
    return scale, zp


@pytest.mark.parametrize("power_of_two", [True, False], ids=["pow2-scale", "odd-scale"])
@pytest.mark.parametrize(("dtype", "axis"), CASES)
def test_quantize_matches_onnxruntime_bit_exactly(dtype, axis, power_of_two):
    scale, zp = _params(dtype, axis, power_of_two)
    x = _test_input(scale, zp, axis)
    attrs = {} if axis is None else {"axis": axis}
    (expected,) = _run_onnx("QuantizeLinear", x.numpy(), {"s": scale.numpy(), "z": zp.numpy()},
                            {"y": _ONNX_TYPES[dtype]}, TensorProto.FLOAT, **attrs)
    got = quantize(x, scale, zp, axis=axis)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), expected)
    if power_of_two:  # the ties really were ties and really rounded half to even
        ties = x[..., :32]
        s = scale.reshape(1, -1, 1) if axis is not None else scale
        assert torch.equal(ties / s - torch.floor(ties / s), torch.full_like(ties, 0.5))


@pytest.mark.parametrize(("dtype", "axis"), CASES)
def test_dequantize_matches_onnxruntime(dtype, axis):
    scale, zp = _params(dtype, axis, power_of_two=False)
    lo, hi = qrange(dtype)
    q = torch.randint(lo, hi + 1, (4, 3, 64), generator=torch.Generator().manual_seed(1)).to(dtype)
    attrs = {} if axis is None else {"axis": axis}
    (expected,) = _run_onnx("DequantizeLinear", q.numpy(), {"s": scale.numpy(), "z": zp.numpy()},
                            {"y": TensorProto.FLOAT}, _ONNX_TYPES[dtype], **attrs)
    np.testing.assert_array_equal(dequantize(q, scale, zp, axis=axis).numpy(), expected)


@pytest.mark.parametrize("case", ["mixed", "positive", "negative", "zeros"])
def test_dynamic_qparams_match_dynamic_quantize_linear(case):
    x = torch.randn(8, 33, generator=torch.Generator().manual_seed(2)) * 3
    cases = {"mixed": x, "positive": x.abs() + 0.5, "negative": -x.abs() - 0.5, "zeros": torch.zeros_like(x)}
    x = cases[case]
    y, y_scale, y_zp = _run_onnx("DynamicQuantizeLinear", x.numpy(), {},
                                 {"y": TensorProto.UINT8, "y_scale": TensorProto.FLOAT,
                                  "y_zp": TensorProto.UINT8}, TensorProto.FLOAT)
    scale, zp = dynamic_qparams(x)
    assert scale.item() == y_scale.item() and zp.item() == y_zp.item()
    np.testing.assert_array_equal(quantize(x, scale, zp).numpy(), y)


_RANGES = st.tuples(st.floats(-1e3, 0.0, width=32), st.floats(0.0, 1e3, width=32))
_SPECS = st.sampled_from([(torch.uint8, False, False), (torch.int8, False, False), (torch.int8, True, True),
                          (torch.int8, True, False), (torch.uint8, True, False)])


@settings(max_examples=150, deadline=None)
@given(rng=_RANGES, spec=_SPECS, bits=st.sampled_from([4, 8]), t=st.floats(0.0, 1.0))
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(rng, spec, bits, t):
    dtype, symmetric, narrow = spec
    lo, hi = torch.tensor(rng[0]), torch.tensor(rng[1])
    scale, zp = choose_qparams(lo, hi, dtype, symmetric=symmetric, bits=bits, narrow=narrow)
    qmin, qmax = qrange(dtype, bits, narrow)
    x = (lo + t * (hi - lo)).reshape(1)
    err = (dequantize(quantize(x, scale, zp, qmin=qmin, qmax=qmax), scale, zp) - x).abs().item()
    # half a step, plus float32 rounding of x / scale and of the product (a few ulps of the values involved)
    assert err <= scale.item() / 2 + 4 * np.finfo(np.float32).eps * (abs(x.item()) + scale.item())


@settings(max_examples=100, deadline=None)
@given(rng=_RANGES, spec=_SPECS)
def test_choose_qparams_represents_zero_exactly(rng, spec):
    dtype, symmetric, narrow = spec
    scale, zp = choose_qparams(torch.tensor(rng[0]), torch.tensor(rng[1]), dtype, symmetric=symmetric,
                               narrow=narrow)
    qmin, qmax = qrange(dtype, 8, narrow)
    assert qmin <= int(zp) <= qmax and scale.item() > 0
    zero = torch.zeros(1)
    assert dequantize(quantize(zero, scale, zp, qmin=qmin, qmax=qmax), scale, zp).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_values_outside_the_range_saturate(dtype):
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(2.0), dtype, symmetric=False)
    lo, hi = qrange(dtype)
    q = quantize(torch.tensor([-1e9, -5.0, 5.0, 1e9]), scale, zp)
    assert q.tolist() == [lo, lo, hi, hi]
    assert quantize(torch.tensor([5.0]), scale, zp, qmin=lo, qmax=hi - 100).item() == hi - 100


@pytest.mark.parametrize("axis", [None, 0], ids=["per-tensor", "per-axis"])
def test_fake_quantize_equals_dequantize_of_quantize_and_has_ste_gradient(axis):
    gen = torch.Generator().manual_seed(3)
    if axis is None:
        scale, zp = torch.tensor(0.037), torch.tensor(-5, dtype=torch.int8)
    else:
        scale, zp = torch.tensor([0.037, 0.5, 0.01]), torch.tensor([-5, 0, 100], dtype=torch.int8)
    s = scale if axis is None else scale[:, None]
    z = zp.float() if axis is None else zp.float()[:, None]
    x = ((torch.rand(3, 500, generator=gen) - 0.5) * 400 * s).requires_grad_()
    y = fake_quantize(x, scale, zp, axis=axis)
    assert torch.equal(y, dequantize(quantize(x.detach(), scale, zp, axis=axis), scale, zp, axis=axis))
    y.sum().backward()
    lo, hi = (-128 - z) * s, (127 - z) * s  # the representable range
    inside = (x > lo + s) & (x < hi - s)
    outside = (x < lo - s) | (x > hi + s)
    assert inside.any() and outside.any()
    assert torch.equal(x.grad[inside], torch.ones_like(x.grad[inside]))
    assert torch.equal(x.grad[outside], torch.zeros_like(x.grad[outside]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fake_quantize_matches_quantize_for_half_inputs(dtype):
    x = (torch.randn(1000, generator=torch.Generator().manual_seed(4)) * 3).to(dtype)
    scale, zp = torch.tensor(0.0371), torch.tensor(3, dtype=torch.int8)
    expected = dequantize(quantize(x, scale, zp), scale, zp)
    assert torch.equal(fake_quantize(x, scale, zp).to(torch.float32), expected)
