"""``mixq quantize`` options users look for: ``--reduce-range``, ``--weights-granularity``, ``--opset``,
``--softmax-floor``."""

from __future__ import annotations

import json

import onnx
import torch


def test_per_tensor_weights_reduce_range_and_opset(mixq_main, user_dir):
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "dynamic", "--example-shape",
                               "1,1,8,8", "--weights-granularity", "per-tensor", "--reduce-range", "on", "--opset",
                               "18", "--output", "cnn_opts.onnx", cwd=user_dir)
    assert code == 0, err
    sidecar = json.loads((user_dir / "cnn_opts.mixq.json").read_text())
    assert sidecar["config"]["weight"]["granularity"] == "per_tensor" and sidecar["config"]["weight"]["bits"] == 7
    proto = onnx.load(str(user_dir / "cnn_opts.onnx"))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    ints = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert ints and all(abs(torch.from_numpy(w).int()).max() <= 63 for w in ints)


def test_reduce_range_auto_follows_the_cpu(mixq_main, user_dir, monkeypatch):
    import mixq.quant.cpu

    monkeypatch.setattr(mixq.quant.cpu, "int8_needs_reduce_range", lambda: True)
    code, out, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "dynamic", "--example-shape",
                               "1,1,8,8", "--output", "cnn_auto.onnx", cwd=user_dir)
    assert code == 0, err
    assert "no VNNI" in out
    assert json.loads((user_dir / "cnn_auto.mixq.json").read_text())["config"]["weight"]["bits"] == 7


def test_opset_below_13_is_refused(mixq_main, user_dir):
    code, _, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "dynamic", "--example-shape",
                             "1,1,8,8", "--opset", "11", "--output", "cnn_old.onnx", cwd=user_dir)
    assert code != 0 and "opset" in err


CAUSAL = """
import torch
from torch import nn


class Causal(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        mask = torch.triu(torch.full((x.shape[1], x.shape[1]), torch.finfo(torch.float32).min), 1)
        return torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1) @ v


def build():
    torch.manual_seed(0)
    return Causal()
"""


def _floors(path) -> int:
    return sum(n.name.startswith("mixq_softmax_floor") and n.op_type == "Max" for n in onnx.load(str(path)).graph.node)


def test_softmax_floor_on_off_and_auto(mixq_main, user_dir, monkeypatch):
    from mixq.export.onnx import softmax

    monkeypatch.setattr(softmax, "underflow_is_slow", lambda: True)
    (user_dir / "causal.py").write_text(CAUSAL)
    for flag, expected in (("auto", 1), ("off", 0), ("on", 1)):
        code, _, err = mixq_main("quantize", "--model", "causal.py:build", "--mode", "fp32", "--example-shape",
                                 "1,6,8", "--softmax-floor", flag, "--output", f"causal_{flag}.onnx", cwd=user_dir)
        assert code == 0, err
        assert _floors(user_dir / f"causal_{flag}.onnx") == expected, flag


def test_softmax_floor_is_refused_for_litert(mixq_main, user_dir):
    code, _, err = mixq_main("quantize", "--model", "nets.py:build", "--mode", "fp16", "--example-shape", "1,1,8,8",
                             "--softmax-floor", "off", "--output", "cnn.tflite", cwd=user_dir)
    assert code != 0 and "--softmax-floor applies to ONNX files" in err
