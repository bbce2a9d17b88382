"""``mixq quantize --format tflite``, then ``mixq inspect`` and ``mixq bench`` on the ``.tflite`` file."""

from __future__ import annotations

import json

import pytest

from mixq.export.tflite import converter

needs_litert = pytest.mark.skipif(not converter.litert_available(),
                                  reason="the LiteRT extra is not installed: pip install 'mixq[litert]'")


@needs_litert
def test_quantize_to_tflite_then_inspect_and_bench(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets:build", "--weights", "w.pt", "--mode", "static",
                               "--calib", "calib.npy", "--format", "tflite", "--io-dtype", "int8",
                               "--output", "cnn_int8.tflite", cwd=user_dir)
    assert code == 0, err
    path = user_dir / "cnn_int8.tflite"
    assert path.exists() and (user_dir / "cnn_int8.mixq.json").exists()
    assert "wrote cnn_int8.tflite" in out

    code, out, err = mixq_main("inspect", path.name, "--json", "cnn_int8.inspect.json", cwd=user_dir)
    assert code == 0, err
    info = json.loads((user_dir / "cnn_int8.inspect.json").read_text())
    assert info["op_types"]["FULLY_CONNECTED"] == 1 and info["op_types"]["DEPTHWISE_CONV_2D"] == 1  # 1 channel in
    assert info["xnnpack_ops"] == len(info["ops"])
    assert "int8[1x1x8x8]" in out and "XNNPACK" in out

    code, out, err = mixq_main("bench", path.name, "--batch", "1,4", "--runs", "3", "--threads", "1",
                               cwd=user_dir)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| cnn_int8.tflite |"))
    assert row.endswith("| n/a | n/a |")  # the file's batch is fixed at 1, and the note says so
    assert "fixed batch size of 1" in out


def test_tflite_options_are_refused_for_onnx(mixq_main, user_dir):
    code, _, err = mixq_main("quantize", "--model", "nets:build", "--mode", "dynamic", "--nhwc",
                             "--output", "x.onnx", cwd=user_dir)
    assert code == 2
    assert "--io-dtype and --nhwc apply to LiteRT files" in err


def test_missing_extra_says_how_to_install(mixq_main, user_dir, monkeypatch):
    monkeypatch.setattr(converter, "_PACKAGES", ("mixq_test_no_such_package",))
    code, _, err = mixq_main("quantize", "--model", "nets:build", "--mode", "dynamic", "--output", "x.tflite",
                             cwd=user_dir)
    assert code == 2
    assert err.strip().count("\n") == 0 and "pip install 'mixq[litert]'" in err
    assert not (user_dir / "x.tflite").exists()
