"""``mixq bench --runtime``: one file on a chosen runtime, or on every installed runtime of its format side by side
(OpenVINO at f32 and at its default precision) with the fastest named; runtimes that cannot run the file refused
in one line before any work."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mixq


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtimes")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    qmodel = mixq.quantize(model, "static", calib_data=[torch.randn(16, 8)], progress=False)
    mixq.export_onnx(qmodel, torch.randn(2, 8), root / "m.onnx")
    return root


def _rows(out: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| m.")]
    return {row[1]: row for row in rows}


def test_all_times_every_runtime_of_the_format_and_names_the_fastest(mixq_main, onnx_file):
    pytest.importorskip("openvino")
    code, out, err = mixq_main("bench", "m.onnx", "--runtime", "all", "--batch", "1,4", "--runs", "3", "--threads",
                               "1", "--json", "r.json", cwd=onnx_file)
    assert code == 0, err
    assert "| model | runtime | size (KB) | b1 median (ms) |" in out
    rows = _rows(out)
    assert "ort" in rows and "openvino:f32" in rows
    default = [label for label in rows if label.startswith("openvino:default")]
    assert len(default) <= 1 and len(rows) == 2 + len(default)  # default shown unless it is f32 here
    assert default == [] or default[0] == "openvino:default (bf16)"
    data = json.loads((onnx_file / "r.json").read_text())
    by_runtime = {r["runtime"]: r for r in data["results"]}
    assert by_runtime["openvino:f32"]["precision"] == "f32" and by_runtime["ort"]["precision"] is None
    for batch in ("1", "4"):
        best = min(data["results"], key=lambda r: r["latency"][batch]["median_ms"])
        line = next(ln for ln in out.splitlines() if ln.startswith(f"fastest b{batch}:"))
        assert f"on {best['runtime']}" in line and f"{best['latency'][batch]['median_ms']:.3f} ms" in line


def test_a_named_runtime_runs_alone(mixq_main, onnx_file):
    pytest.importorskip("openvino")
    code, out, err = mixq_main("bench", "m.onnx", "--runtime", "openvino:f32", "--batch", "2", "--runs", "3",
                               cwd=onnx_file)
    assert code == 0, err
    assert list(_rows(out)) == ["openvino:f32"] and "fastest" not in out


@pytest.mark.parametrize(("runtime", "message"), [
    ("litert", "--runtime litert: runtime 'litert' runs .tflite files, not m.onnx; .onnx files run on: ort, "
               "openvino"),
    ("tensorrt", "--runtime tensorrt: unknown runtime 'tensorrt'; known runtimes: litert, openvino, ort"),
    ("openvino:f16", "--runtime openvino:f16: runtime 'openvino' has no option value 'f16'; its values: default, "
                     "f32, bf16"),
], ids=["other-format", "unknown", "bad-option"])
def test_a_runtime_that_cannot_run_the_file_is_refused_in_one_line(mixq_main, onnx_file, runtime, message):
    code, out, err = mixq_main("bench", "m.onnx", "--runtime", runtime, cwd=onnx_file)
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line == f"mixq bench: error: {message}; pick a runtime for these files, or --runtime all"


def test_a_missing_runtime_names_its_extra_and_all_skips_it(mixq_main, onnx_file, monkeypatch):
    from mixq.export.openvino.backend import OpenVINORuntime

    monkeypatch.setattr(OpenVINORuntime, "available", lambda self: False)
    code, out, err = mixq_main("bench", "m.onnx", "--runtime", "openvino", cwd=onnx_file)
    assert code == 2 and 'pip install "mixq[openvino]"' in err and "OpenVINO" in err.splitlines()[0]
    code, out, err = mixq_main("bench", "m.onnx", "--runtime", "all", "--batch", "1", "--runs", "2", cwd=onnx_file)
    assert code == 0, err
    assert list(_rows(out)) == ["ort"]
