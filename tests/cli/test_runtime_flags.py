"""``--runtime`` on ``mixq autoquant`` and ``mixq demo``: a runtime that cannot run the .onnx files they write, or
is not installed, is refused in one line before any work."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("command", "hint"), [
    (["autoquant", "--model", "nets:build", "--calib", "calib.npy", "--eval", "nets:score", "--output", "a.onnx"],
     "autoquant writes an ONNX file; pick a runtime for it"),
    (["demo", "--out", "report"], "the demo writes .onnx files; pick a runtime for them"),
], ids=["autoquant", "demo"])
def test_a_runtime_for_another_format_is_refused(mixq_main, user_dir, command, hint):
    code, out, err = mixq_main(*command, "--runtime", "litert", cwd=user_dir)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.endswith(f"error: --runtime litert: runtime 'litert' runs .tflite files, not "
                         f"{'a.onnx' if command[0] == 'autoquant' else 'model.onnx'}; .onnx files run on: ort, "
                         f"openvino; {hint}")
    assert not (user_dir / "a.onnx").exists() and not (user_dir / "report").exists()


@pytest.mark.parametrize("command", [
    ["autoquant", "--model", "nets:build", "--calib", "calib.npy", "--eval", "nets:score", "--output", "a.onnx"],
    ["demo", "--out", "report"],
], ids=["autoquant", "demo"])
def test_a_missing_runtime_names_its_extra(mixq_main, user_dir, monkeypatch, command):
    from mixq.export.openvino.backend import OpenVINORuntime

    monkeypatch.setattr(OpenVINORuntime, "available", lambda self: False)
    code, out, err = mixq_main(*command, "--runtime", "openvino", cwd=user_dir)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.endswith('error: --runtime openvino needs OpenVINO, which is not installed; install the OpenVINO '
                         'extra: pip install "mixq[openvino]"')
