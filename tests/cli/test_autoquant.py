"""``mixq autoquant`` end to end: report on stdout, ONNX file, JSON sidecar and report files on disk; bad input."""

from __future__ import annotations

import json

import pytest


def test_autoquant_writes_model_sidecar_and_report(mixq_cli, user_dir):
    proc = mixq_cli("autoquant", "--model", "nets:build", "--weights", "w.pt", "--calib", "calib.npy", "--eval",
                    "nets:score", "--max-drop", "0.05", "--objective", "size", "--batch", "1,4", "--output",
                    "cnn_auto.onnx", cwd=user_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# mixq autoquantize (objective: size)" in proc.stdout and "wrote cnn_auto.onnx" in proc.stdout
    sidecar = json.loads((user_dir / "cnn_auto.mixq.json").read_text())
    assert sidecar["eval"] == "nets:score" and sidecar["met"] is True
    assert set(sidecar["precisions"]) == {"conv", "fc"} and sidecar["config"]["mode"] == "static"
    report = json.loads((user_dir / "cnn_auto.autoquant.json").read_text())
    assert report["evaluations"] <= report["max_evals"] and report["baseline"] == 1.0
    assert [v["name"] for v in report["variants"]] == ["fp32", "dynamic", "all-int8", "chosen"]
    assert all(len(v["latency_by_shape"]) == 2 and next(iter(v["latency_by_shape"])).startswith("1x")
               for v in report["variants"])  # --batch 1,4: one latency per batch size
    assert (user_dir / "cnn_auto.autoquant.png").read_bytes()[:4] == b"\x89PNG"
    assert (user_dir / "cnn_auto.onnx").stat().st_size > 0 and not list(user_dir.glob("*.tmp"))


@pytest.mark.parametrize("args,message", [
    (["--eval", "score"], "--eval 'score' is not MODULE:FUNCTION"),
    (["--eval", "nets:nope"], "cannot load nets:nope"),
    (["--eval", "nets:broken_score"], "--eval nets:broken_score failed"),
    (["--eval", "nets:score", "--max-drop", "-1"], "mixq.autoquantize rejected the request"),
    (["--eval", "nets:score", "--batch", "1,x"], "--batch '1,x' is not a list of positive integers"),
    (["--eval", "nets:score", "--batch", "1,1"], "deploy_shapes has repeated batch sizes"),
])
def test_bad_input_is_one_line_and_exit_code_2(mixq_main, user_dir, args, message):
    code, _, err = mixq_main("autoquant", "--model", "nets:build", "--calib", "calib.npy", *args, "--output",
                             "bad_auto.onnx", cwd=user_dir)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (user_dir / "bad_auto.onnx").exists()


def test_calibration_data_is_required(mixq_main, user_dir):
    code, _, err = mixq_main("autoquant", "--model", "nets:build", "--eval", "nets:score", "--example-shape",
                             "1,1,8,8", "--output", "bad_auto.onnx", cwd=user_dir)
    assert code == 2 and "autoquant needs calibration data" in err
