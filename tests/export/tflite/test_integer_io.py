"""LiteRT files keep mixq's numbers exactly: integer and NHWC I/O on mixq's grids, and QAT-learned scales and
int8 weights stored bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")

import mixq  # noqa: E402
from mixq.export.tflite.interpreter import make_interpreter  # noqa: E402
from mixq.quant.modules import QuantizedConv, QuantizedLinear  # noqa: E402


@pytest.fixture(scope="module")
def static_cnn(trained_cnn, digits):
    x = digits["x_train"].reshape(-1, 1, 8, 8)
    return mixq.quantize(trained_cnn, "static", calib_data=[x[i:i + 64] for i in range(0, 256, 64)], progress=False)


@pytest.fixture(scope="module")
def integer_files(static_cnn, digits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("io")
    x = digits["x_test"].reshape(-1, 1, 8, 8)
    return {
        "int8": mixq.export_tflite(static_cnn, x[:1], folder / "int8.tflite", io_dtype="int8"),
        "uint8_nhwc": mixq.export_tflite(static_cnn, x[:1], folder / "uint8.tflite", io_dtype="uint8", nhwc=True),
    }


def _layers(model):
    return [m for m in model.modules() if isinstance(m, (QuantizedConv, QuantizedLinear))]


@pytest.mark.parametrize("name, dtype, shift, shape", [("int8", np.int8, 0, [1, 1, 8, 8]),
                                                        ("uint8_nhwc", np.uint8, 128, [1, 8, 8, 1])])
def test_integer_io_sits_on_mixqs_grids(static_cnn, integer_files, digits, name, dtype, shift, shape):
    it = make_interpreter(integer_files[name])
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    first, last = _layers(static_cnn)[0], _layers(static_cnn)[-1]
    assert inp["dtype"] == dtype and out["dtype"] == dtype
    assert list(inp["shape"]) == shape
    assert inp["quantization"] == (pytest.approx(float(first.x_scale), rel=1e-7), int(first.x_zp) - 128 + shift)
    assert out["quantization"] == (pytest.approx(float(last.y_scale), rel=1e-7), int(last.y_zp) - 128 + shift)

    x = digits["x_test"].reshape(-1, 1, 8, 8)
    feed = x.permute(0, 2, 3, 1) if name.endswith("nhwc") else x
    got = mixq.TFLiteRunner(integer_files[name])(feed)
    with torch.no_grad():
        ref = static_cnn(x).numpy()
    step = float(last.y_scale)
    assert np.mean(np.abs(got - ref) <= step * (1 + 1e-5)) >= 0.999
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.995


def test_integer_files_run_int8_kernels_on_xnnpack(integer_files):
    info = mixq.inspect_tflite(integer_files["int8"])
    assert set(info.op_types) <= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "ADD", "MEAN",
                                  "RESHAPE", "TRANSPOSE"}, info.op_types  # no QUANTIZE/DEQUANTIZE at the edges
    assert info.delegated_fraction == 1.0
    uint8 = mixq.inspect_tflite(integer_files["uint8_nhwc"])
    assert uint8.op_types["QUANTIZE"] == 2  # uint8 <-> int8 at the edges, a shift by 128
    assert "TRANSPOSE" not in uint8.op_types  # NHWC in, NHWC convolutions: no layout transposes


def test_qat_learned_scales_and_weights_are_stored_exactly(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 12, 6))
    x = torch.randn(64, 3, 12, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 6, (64,), generator=torch.Generator().manual_seed(2))
    # float_outputs=False: a full-integer file quantizes the logits too (a float-output layer has no LiteRT form)
    qat = mixq.prepare_qat(net, example_inputs=x[:8], learnable_scales=True, float_outputs=False)
    opt = torch.optim.Adam(qat.parameters(), lr=1e-3)
    for i in range(0, 64, 16):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(qat(x[i:i + 16]), target[i:i + 16]).backward()
        opt.step()
    qmodel = mixq.convert(qat.eval())
    path = mixq.export_tflite(qmodel, x[:1], tmp_path / "qat.tflite")

    it = make_interpreter(path, xnnpack=False)
    stored = {}
    for d in it.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and scales.size > 1:
            stored[scales.tobytes()] = it.get_tensor(d["index"])
    activation_scales = {float(np.float32(d["quantization"][0])) for d in it.get_tensor_details()}
    for layer in _layers(qmodel):
        scale = layer.w_scale.numpy().astype(np.float32)
        assert scale.tobytes() in stored, f"{type(layer).__name__}: learned weight scales not in the file"
        q = layer.qweight.numpy() if isinstance(layer, QuantizedConv) else layer.weight_t.t().numpy()
        w = stored[scale.tobytes()]
        assert np.array_equal(w.reshape(w.shape[0], -1), np.moveaxis(q, 1, -1).reshape(q.shape[0], -1)), \
            "int8 weights differ from mixq's"
        for s in (layer.x_scale, layer.y_scale):
            assert float(np.float32(s.item())) in activation_scales
    got = mixq.TFLiteRunner(path)(x)
    with torch.no_grad():
        ref = qmodel(x).numpy()
    assert np.abs(got - ref).max() <= float(_layers(qmodel)[-1].y_scale) * (1 + 1e-5)


def test_given_feeds_are_quantized_on_the_files_input_grid(integer_files, digits):
    session = mixq.LiteRTSession(integer_files["int8"], threads=1)
    x = digits["x_test"].reshape(-1, 1, 8, 8)[:1].numpy()
    (feed,) = session.given_feeds([x]).values()
    (d,) = session.runner.input_details
    scale, zp = d["quantization"]
    assert feed.dtype == np.int8
    assert np.array_equal(feed, np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127).astype(np.int8))
    with pytest.raises(ValueError, match="fixed batch size of 1, not 2"):
        session.given_feeds([np.zeros((2, 1, 8, 8), np.float32)])
    with pytest.raises(ValueError, match=r"takes 1x1x8x8, not 1x8x8x1"):
        session.given_feeds([np.zeros((1, 8, 8, 1), np.float32)])


def test_a_resizable_batch_follows_every_call(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.rand(3, 1, 8, 8)
    runner = mixq.TFLiteRunner(mixq.export_tflite(net, x[:1], tmp_path / "dyn.tflite", dynamic_batch=True))
    with torch.no_grad():
        ref = net(x).numpy()
    for n in (3, 1, 2, 1):  # back to an earlier size resizes again
        np.testing.assert_allclose(runner(x[:n]), ref[:n], atol=1e-5)


def test_token_id_inputs_are_cast_not_quantized(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 2)).eval()
    ids = torch.randint(0, 50, (1, 6))
    runner = mixq.TFLiteRunner(mixq.export_tflite(net, ids, tmp_path / "ids.tflite"))  # the export runs it too
    (d,) = runner.input_details
    assert np.dtype(d["dtype"]).kind == "i" and d["quantization"] == (0.0, 0)  # integers on no grid
    with torch.no_grad():
        np.testing.assert_allclose(runner(ids), net(ids).numpy(), atol=1e-5)
