"""``--config FILE``: a command's options from YAML, or a run's sidecar replayed."""

from __future__ import annotations

import json


def test_options_from_yaml_and_a_sidecar_replayed(mixq_main, user_dir):
    (user_dir / "run.yaml").write_text("model: nets.py:build\nmode: dynamic\nexample_shape: 1,1,8,8\n"
                                       "exclude: [conv]\noutput: cnn_cfg.onnx\n")
    code, out, err = mixq_main("quantize", "--config", "run.yaml", cwd=user_dir)
    assert code == 0, err
    first = json.loads((user_dir / "cnn_cfg.mixq.json").read_text())
    assert first["config"]["mode"] == "dynamic" and first["config"]["exclude"] == ["conv"]

    code, out, err = mixq_main("quantize", "--config", "cnn_cfg.mixq.json", "--output", "cnn_again.onnx",
                               cwd=user_dir)
    assert code == 0, err
    again = json.loads((user_dir / "cnn_again.mixq.json").read_text())
    assert again["config"] == first["config"] and again["summary"] == first["summary"]
    assert (user_dir / "cnn_again.onnx").read_bytes() == (user_dir / "cnn_cfg.onnx").read_bytes()


def test_a_sidecar_of_another_command_is_refused(mixq_main, user_dir):
    (user_dir / "other.json").write_text(json.dumps({"command": ["mixq", "bench", "x.onnx"]}))
    code, _, err = mixq_main("quantize", "--config", "other.json", cwd=user_dir)
    assert code != 0 and "mixq bench" in err
