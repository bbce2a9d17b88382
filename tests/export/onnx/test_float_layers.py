"""A layer mixq keeps float between int8 layers stays float in ONNX Runtime (``mixq.export.onnx.float_layers``):
ORT's ``WeightBiasQuantization`` would otherwise quantize its float weight per tensor on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mixq
from mixq.export.onnx import float_layers
from mixq.export.onnx.float_layers import keep_float_layers_float


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                          nn.Linear(16, 4)).eval()
    with torch.no_grad():
        model[2].weight[0] *= 30  # one channel 30x the others: per-tensor int8 weights would crush the rest
        model[6].weight[0] *= 30
    return model


def _dead_nodes(path) -> list[str]:
    """Nodes of the ONNX file at ``path`` whose outputs nothing reads (ONNX Runtime runs them anyway)."""
    import onnx

    graph = onnx.load(str(path)).graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    return [node.op_type for node in graph.node if not any(out in read for out in node.output)]


@pytest.mark.parametrize("kept", ["2", "6"], ids=["depthwise conv", "linear (Gemm)"])
def test_a_layer_kept_float_between_int8_layers_runs_float_in_onnx_runtime(kept, tmp_path, ort_run,
                                                                            monkeypatch):
    model = _net()
    calib = [torch.rand(8, 3, 6, 6) for _ in range(3)]
    q = mixq.quantize(model, "static", calib_data=calib, progress=False,
                      overrides=[mixq.LayerOverride(kept, "fp32")])
    assert {r.name: r.status for r in q.mixq_summary.layers}[kept] == "float"
    path = mixq.export_onnx(q, calib[0][:1], tmp_path / "q.onnx")
    ops = mixq.optimized_op_types(path)
    assert ops["Conv" if kept == "2" else "Gemm"] >= 1, ops  # the kept layer, in float
    assert not _dead_nodes(path)  # the replaced dequantize is gone: ORT would run it for nothing
    x = torch.rand(16, 3, 6, 6)
    with torch.no_grad():
        sim = q(x).numpy()
    np.testing.assert_allclose(ort_run(path, x)[0], sim, atol=1e-4, rtol=1e-4)

    monkeypatch.setattr(float_layers, "keep_float_layers_float", lambda model: 0)  # the file without the pass
    plain = mixq.export_onnx(q, calib[0][:1], tmp_path / "plain.onnx")
    assert mixq.optimized_op_types(plain).get("Conv" if kept == "2" else "Gemm", 0) == 0  # ORT quantized it
    assert np.abs(ort_run(plain, x)[0] - sim).max() > 10 * np.abs(ort_run(path, x)[0] - sim).max() + 1e-3


def test_the_pass_leaves_layers_without_a_quantized_neighbour_alone():
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    proto = helper.make_model(graph)
    assert keep_float_layers_float(proto) == 0 and len(proto.graph.node) == 1


def test_a_dequantize_another_layer_still_reads_is_kept():
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"]),
             helper.make_node("Add", ["cd", "xd"], ["y"])]  # a residual reads the input's dequantize too
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph)
    assert keep_float_layers_float(proto) == 1
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") == 3 and ops.index("Add") > 0  # the residual's dequantize stays
    assert next(n for n in proto.graph.node if n.op_type == "Add").input[1] == "xd"
