"""The zoo's node-by-node check: it finds mixq's arithmetic equal to ONNX Runtime's quantize nodes, and it notices
when the arithmetic differs (rounding ties the other way, another dynamic scale)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.zoo import quantize_nodes
from tests.zoo.conformance import _nudged
from tests.zoo.quantize_nodes import quantize_nodes_match

pytest.importorskip("onnxruntime")


@pytest.fixture
def two_quantize_nodes(tmp_path):
    """x -> QuantizeLinear(scale 0.5, zero point 128) and x -> DynamicQuantizeLinear, both as outputs."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"], name="static_q"),
             helper.make_node("DynamicQuantizeLinear", ["x"], ["dq", "ds", "dz"], name="dynamic_q"),
             helper.make_node("Cast", ["q"], ["out"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [8])],
        initializer=[helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("z", TensorProto.UINT8, [], [128])])
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    # 0.25, 0.75 and 1.25 over 0.5 are ties: half to even gives 0, 2, 2; half away from zero 1, 2, 3
    return path, {"x": np.array([0.25, 0.75, 1.25, -3.0, 2.0, 0.1, 7.3, 0.0], dtype=np.float32)}


def test_mixq_arithmetic_equals_the_runtime_node_by_node(two_quantize_nodes):
    path, feeds = two_quantize_nodes
    assert quantize_nodes_match(path, feeds) == (2, [])


def test_a_different_rounding_is_found(two_quantize_nodes, monkeypatch):
    path, feeds = two_quantize_nodes

    def half_away_from_zero(x, scale, zero_point, axis=None):
        q = torch.sign(x / scale) * torch.floor(torch.abs(x / scale) + 0.5) + zero_point
        return q.clamp(0, 255).to(zero_point.dtype)

    monkeypatch.setattr(quantize_nodes, "quantize", half_away_from_zero)
    checked, differ = quantize_nodes_match(path, feeds)
    assert checked == 2 and "static_q: 2 of 8 codes differ" in differ  # 0.25 and 1.25: ties


def test_a_different_dynamic_scale_is_found(two_quantize_nodes, monkeypatch):
    path, feeds = two_quantize_nodes
    real = quantize_nodes.dynamic_qparams
    monkeypatch.setattr(quantize_nodes, "dynamic_qparams", lambda x: (real(x)[0] * 1.001, real(x)[1]))
    assert quantize_nodes_match(path, feeds)[1][0].startswith("dynamic_q: scale/zero point")


def test_a_nudge_moves_every_float_by_one_ulp_and_keeps_integers():
    x, ids = torch.randn(64), torch.arange(5)
    nudged = _nudged({"x": x, "ids": ids}, seed=0)
    assert torch.equal(nudged["ids"], ids)
    up, down = torch.nextafter(x, torch.tensor(torch.inf)), torch.nextafter(x, torch.tensor(-torch.inf))
    assert bool(((nudged["x"] == up) | (nudged["x"] == down)).all()) and not torch.equal(nudged["x"], x)
    assert 0 < int((nudged["x"] == up).sum()) < 64
