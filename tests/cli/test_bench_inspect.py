"""``mixq bench`` and ``mixq inspect`` end to end on a file written by ``mixq quantize``."""

from __future__ import annotations

import json


def test_bench_table_and_json(mixq_cli, quantized, user_dir):
    proc = mixq_cli("bench", quantized.name, "--batch", "1,4", "--threads", "1", "--runs", "5", "--json",
                    "bench.json", cwd=user_dir)
    assert proc.returncode == 0, proc.stderr
    assert "| model | size (KB) | b1 median (ms) | b1 p90 (ms) | b4 median (ms) | b4 p90 (ms) |" in proc.stdout
    data = json.loads((user_dir / "bench.json").read_text())
    (result,) = data["results"]
    assert result["size_bytes"] == quantized.stat().st_size
    for batch in ("1", "4"):
        lat = result["latency"][batch]
        assert 0 < lat["median_ms"] <= lat["p90_ms"] and lat["runs"] == 5
        assert f"{lat['median_ms']:.3f}" in proc.stdout


def test_inspect_reports_integer_kernels_and_sizes(mixq_cli, quantized, user_dir):
    proc = mixq_cli("inspect", quantized.name, "--json", "inspect.json", cwd=user_dir)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((user_dir / "inspect.json").read_text())
    assert info["quantized_nodes"] == len(info["nodes"]) == 2
    assert info["ort_integer_kernels"].get("QLinearConv") == 1 and not info["ort_float_compute"]
    assert info["size_by_dtype"]["int8"]["bytes"] > info["size_by_dtype"]["float32"]["bytes"]
    assert "integer kernels: QLinearConv" in proc.stdout and "int8" in proc.stdout


def test_bench_fixed_batch_model_says_why(mixq_main, tmp_path):
    import torch

    import mixq

    path = mixq.export_onnx(torch.nn.Linear(4, 2), torch.randn(1, 4), tmp_path / "fixed.onnx", dynamic_shapes=False)
    code, out, err = mixq_main("bench", path.name, "--batch", "1,8", "--runs", "2", cwd=tmp_path)
    assert code == 0, err
    assert "| fixed.onnx |" in out and "| n/a | n/a |" in out
    assert "note: fixed.onnx b8: input" in out and "fixed batch size of 1" in out


def test_inspect_float_model_has_no_integer_kernels(mixq_main, tmp_path):
    import torch

    import mixq

    path = mixq.export_onnx(torch.nn.Linear(4, 2), torch.randn(1, 4), tmp_path / "float.onnx")
    code, out, err = mixq_main("inspect", path.name, cwd=tmp_path)
    assert code == 0, err
    assert "0 of 1 with quantized or float16 weights" in out and "integer kernels: none" in out
