"""Residual LayerNorms stay off ONNX Runtime's SkipLayerNormalization (``mixq.export.onnx.layernorm``): the exported
file computes bit for bit what Add + LayerNormalization compute, in a plain session."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq
from mixq.export.onnx.layernorm import keep_layernorm_unfused

WIDTH = 48


class Residual(nn.Module):
    """Two post-LayerNorm residual blocks (BERT's pattern) and a LayerNorm that reads no Add."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH)
        self.ln1, self.ln2, self.ln_in = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_in(x)
        x = self.ln1(x + self.fc1(x))
        return self.ln2(x + torch.relu(self.fc2(x)))


def _session(model: str | bytes, disabled: list[str] | None = None) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"], disabled_optimizers=disabled or [])


def _add_layernorm(axis: int) -> onnx.ModelProto:
    dims = ["batch", "seq", WIDTH]
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Add", ["x", "y"], ["s"]),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["out"], axis=axis, epsilon=1e-12)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in "xy"],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), n) for n in "gb"])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("axis", [-1, 2], ids=["axis-1", "axis2"])
def test_the_rewrite_computes_add_and_layernorm_bit_for_bit_without_the_fusion(axis):
    model = _add_layernorm(axis)
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((3, 7, WIDTH)).astype(np.float32) * 4 for n in "xy"}
    unfused = _session(model.SerializeToString(), ["SkipLayerNormFusion"]).run(None, feeds)[0]
    fused = _session(model.SerializeToString()).run(None, feeds)[0]
    assert not np.array_equal(fused, unfused)  # SkipLayerNormalization rounds differently: the test can tell

    assert keep_layernorm_unfused(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Add", "Unsqueeze", "LayerNormalization", "Squeeze"]
    assert np.array_equal(_session(model.SerializeToString()).run(None, feeds)[0], unfused)


def test_exported_residual_layernorms_are_not_fused_and_match_pytorch(tmp_path):
    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(2, 5, WIDTH)
    path = mixq.export_onnx(model, x, tmp_path / "residual.onnx")
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("Unsqueeze") == 2  # the two residual LayerNorms, not ln_in
    for level in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):  # ALL: what a plain session runs
        ops = mixq.optimized_op_types(path, level)
        assert "SkipLayerNormalization" not in ops and ops["LayerNormalization"] == 3, (level, ops)
    for shape in [(1, 5, WIDTH), (4, 5, WIDTH)]:  # symbolic batch
        x = torch.randn(shape)
        (out,) = _session(str(path)).run(None, {graph.input[0].name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(out, model(x).numpy(), atol=1e-5, rtol=0)
