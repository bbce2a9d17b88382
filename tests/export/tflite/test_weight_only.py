"""Weight-only layers for LiteRT: the lowered layer holds mixq's integer codes and scales (blockwise scales rounded
as the file stores them), what LiteRT cannot hold is refused, and an MLP's file runs mixq's int4 codes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.export.tflite.lowering import lower  # noqa: E402
from mixq.export.tflite.weight_only import (  # noqa: E402
    WeightOnlyWeights,
    file_scale,
    refusal,
    row_quantized_activations,
)
from mixq.quant.modules import WeightOnlyLinear  # noqa: E402
from mixq.quant.spec import QuantSpec  # noqa: E402


def _layer(bits: int, group: int | None, k: int = 64, symmetric: bool = True) -> WeightOnlyLinear:
    torch.manual_seed(0)
    spec = QuantSpec(bits=bits, granularity="per_group" if group else "per_channel", group_size=group,
                     symmetric=symmetric)
    return WeightOnlyLinear(nn.Linear(k, 24), spec)


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, None), (4, 32), (3, 64)], ids=["int8", "int4-channel",
                                                                                          "int4-g32", "int3-g64"])
def test_the_lowered_layer_holds_mixqs_codes_and_scales(bits, group):
    m = _layer(bits, group)
    lowered = WeightOnlyWeights(m)
    x = torch.randn(3, 64)
    expected = m(x)
    assert lowered.codes.abs().max() <= 2 ** (bits - 1) - 1
    if group is None or group >= 64:  # per-channel: float32 scales, the very weights mixq multiplies by
        assert lowered.block == 0
        torch.testing.assert_close(lowered(x), expected, rtol=0, atol=1e-5)
    else:  # blockwise: the same codes times the bfloat16-rounded scales
        assert lowered.block == group
        scale = file_scale(m.scales.reshape(24, -1))
        assert torch.equal(lowered.scale, scale)
        assert float((scale / m.scales.reshape(24, -1) - 1).abs().max()) <= 2 ** -8


@pytest.mark.parametrize(("layer", "message"), [
    (lambda: _layer(4, 32, symmetric=False), "zero points"),
    (lambda: _layer(8, 32), "8-bit groups"),
    (lambda: _layer(4, 16), "group size 16"),
    (lambda: _layer(4, 32, k=80), "not a whole number of 32-column groups"),
])
def test_grids_litert_cannot_hold_are_refused(layer, message):
    assert message in refusal(layer())


def test_row_quantized_activations_round_each_row_on_its_own_int8_grid():
    model = nn.Sequential(_layer(8, None))
    x = torch.randn(2, 64) * torch.tensor([[1.0], [100.0]])
    with row_quantized_activations(model):
        y = model(x)
    steps = (x.amax(-1) - x.amin(-1)) / 255
    assert torch.allclose(y, model(x), atol=float(steps.max()) * 64)  # a rounding, not another layer
    assert not torch.equal(y, model(x))


def test_a_weight_only_mlp_exports_with_int4_codes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    q = mixq.quantize(model, "weight_only", bits=4, group_size=32, progress=False)
    path = mixq.export_tflite(q, torch.randn(1, 64), tmp_path / "mlp_int4.tflite")
    assert "int4" in mixq.inspect_tflite(path).size_by_dtype
    x = torch.randn(4, 64)
    got = mixq.TFLiteRunner(path)(x)
    lowered, _ = lower(q)
    with row_quantized_activations(lowered), torch.no_grad():
        ref = lowered(x).numpy()  # int4 codes, bfloat16 scales, activations rounded per row: what XNNPACK runs
        sim = q(x).numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.abs(got - sim).max() > 1e-4 * np.abs(ref).max()  # mixq's simulation rounds neither


@pytest.mark.parametrize(("bits", "group"), [(4, 32), (4, None), (8, None)], ids=["int4-g32", "int4-channel", "int8"])
def test_quantized_for_litert_the_simulation_is_the_files_arithmetic(tmp_path, bits, group):
    """``runtime="litert"``: mixq's weight-only layers hold the scales the file holds and round their input per row
    as XNNPACK does, so the file's outputs equal the simulation's to float32 rounding, on inputs of any range."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    q = mixq.quantize(model, "weight_only", bits=bits, group_size=group, runtime="litert", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantized for LiteRT: no warning that the file computes otherwise
        path = mixq.export_tflite(q, torch.randn(1, 64), tmp_path / "mlp.tflite")
    x = torch.randn(6, 64) * torch.logspace(-2, 2, 6).unsqueeze(1)
    got = mixq.TFLiteRunner(path)(x)
    with torch.no_grad():
        sim = q(x).numpy()
        float_activations = lower(q)[0](x).numpy()
    peak = np.abs(sim).max(-1, keepdims=True)
    assert (np.abs(got - sim) <= 1e-5 * peak).all()  # every row, to float32 rounding
    assert (np.abs(got - float_activations).max(-1) > 1e-4 * peak[:, 0]).all()  # which float activations are not


def test_a_weight_only_model_for_onnx_runtime_warns_that_the_file_computes_otherwise(tmp_path):
    q = mixq.quantize(nn.Sequential(nn.Linear(64, 8)), "weight_only", bits=4, group_size=32, progress=False)
    with pytest.warns(UserWarning, match=r"1 Linears with integer weights .*quantized for ONNX Runtime"):
        mixq.export_tflite(q, torch.randn(1, 64), tmp_path / "ort.tflite")


def test_constants_past_256_kib_keep_mixqs_codes_and_scales(tmp_path):
    """ai-edge-quantizer writes a model whose constants pass 256 KiB with the data after the flatbuffer (buffers
    addressed by offset); rewritten without moving that data inline, the file's scales and biases were garbage
    and its outputs non-finite (the int4 Llama decoder at hidden 1024). 512 x 1024 int4 codes take 256 KiB."""
    from ai_edge_litert.tools import flatbuffer_utils

    from mixq.export.tflite.converter import convert_to_tflite
    from mixq.export.tflite.weight_only import store_weight_only

    torch.manual_seed(0)
    q = mixq.quantize(nn.Sequential(nn.Linear(512, 1024)), "weight_only", bits=4, group_size=64, progress=False)
    lowered, _ = lower(q)
    layer = lowered[0]
    float_file = convert_to_tflite(lowered, (torch.randn(1, 512),), {}, quantized=False, float_io=True,
                                   dynamic_batch=False)
    content = store_weight_only(float_file, [layer])
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    stored = [np.asarray(b.data, dtype=np.uint8) for b in model.buffers if b.data is not None]
    assert not any(b.offset for b in model.buffers)
    assert layer.scale.to(torch.float16).numpy().view(np.uint8).tobytes() in {s.tobytes() for s in stored}
    path = tmp_path / "wide_int4.tflite"
    path.write_bytes(content)
    x = torch.randn(2, 512)
    with row_quantized_activations(lowered), torch.no_grad():
        ref = lowered(x).numpy()
    got = mixq.TFLiteRunner(path)(x)
    assert np.isfinite(got).all() and np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_the_reference_rounds_rows_on_a_grid_as_xnnpack_does(tmp_path):
    """Rows already on a grid close to XNNPACK's per-row int8 grid (an int8 embedding row, normalized: the int4
    Llama decoder at hidden 1024) sit on rounding ties, which only XNNPACK's order of roundings puts on the same
    side: ``x * (255 / range)`` with one IEEE division (not ``x / (range / 255)``, not PyTorch's ``255.0 / t``, a
    reciprocal then a product), rounded before the zero point is added."""
    torch.manual_seed(0)
    q = mixq.quantize(nn.Sequential(nn.Linear(1024, 64)), "weight_only", bits=4, group_size=64, progress=False)
    codes = torch.randint(-127, 128, (32, 1024)).float()
    codes[:, 0], codes[:, 1] = -127, 127
    x = (codes * torch.rand(32, 1) * 0.1)[None]
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # an RMSNorm of int8 embedding rows
    path = mixq.export_tflite(q, x, tmp_path / "grid.tflite")
    lowered, _ = lower(q)
    with row_quantized_activations(lowered), torch.no_grad():
        ref = lowered(x).numpy()
    got = mixq.TFLiteRunner(path)(x)
    rows_off = (np.abs(got - ref).max(-1) > 1e-5 * np.abs(ref).max()).sum()
    assert rows_off == 0  # every row to float32 rounding (255.0 / t or round(x * inv + zero) left 1-3 rows off)
