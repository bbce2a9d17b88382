"""Masked Softmax inputs floored off ONNX Runtime's denormal slow path (``mixq.export.onnx.softmax``): the same
outputs as the unfloored graph, bit for bit, NaN rows included; only where the file is for ONNX Runtime on a CPU
that needs it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import mixq
from mixq.export import backend
from mixq.export.onnx import softmax
from mixq.export.onnx.softmax import MARGIN, floor_masked_softmax

HEADS, SEQ, DIM = 2, 16, 8


def _attention_graph(producer: str = "Add", opset: int = 18) -> onnx.ModelProto:
    """scores (+ mask, or Where) -> Softmax -> probabilities @ values."""
    dims = ["batch", HEADS, SEQ, SEQ]
    if producer == "Add":
        masking = helper.make_node("Add", ["scores", "mask"], ["masked"])
    else:
        masking = helper.make_node("Where", ["keep", "scores", "neg"], ["masked"])
    nodes = [masking, helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["out"])]
    inputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, dims),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, SEQ]),
              helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 1, 1, SEQ])]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((SEQ, DIM)).astype(np.float32), "v"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "neg")]
    graph = helper.make_graph(nodes, "attention", [i for i in inputs if i.name in {x for n in nodes for x in n.input}],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", HEADS, SEQ, DIM])],
                              inits, value_info=[helper.make_tensor_value_info("masked", TensorProto.FLOAT, dims)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


def _feeds() -> dict[str, np.ndarray]:
    """Padded rows (right padding), a left-padded row (key 0 masked), one with scores far apart, a NaN row."""
    rng = np.random.default_rng(1)
    scores = (rng.standard_normal((4, HEADS, SEQ, SEQ)) * 6).astype(np.float32)
    keep = np.ones((4, 1, 1, SEQ), bool)
    keep[0, ..., 10:] = keep[1, ..., :5] = keep[2, ..., 12:] = False
    scores[2, 0, 3] += np.linspace(0, 200, SEQ, dtype=np.float32)  # some unmasked entries far below the max
    scores[3, 1, 7, 4] = np.nan
    mask = np.where(keep, 0, np.finfo(np.float32).min).astype(np.float32)
    return {"scores": scores, "mask": mask, "keep": keep}


@pytest.mark.parametrize("producer", ["Add", "Where"])
def test_floored_softmax_gives_the_same_outputs_bit_for_bit(producer):
    model, feeds = _attention_graph(producer), _feeds()
    before = _run(model, feeds)[0]
    assert floor_masked_softmax(model) == 1
    onnx.checker.check_model(model, full_check=True)
    after = _run(model, feeds)[0]
    np.testing.assert_array_equal(after, before)  # NaN where it was, and nowhere else
    assert np.isnan(after[3, 1, 7]).all() and not np.isnan(np.delete(after, 3, axis=0)).any()


def test_floor_keeps_every_entry_within_the_margin_of_its_row_maximum():
    """The floored scores themselves: nothing changes within MARGIN of a row's first key, masked entries rise to
    the floor, and a row whose first key is masked keeps its values."""
    model, feeds = _attention_graph(), _feeds()
    floor_masked_softmax(model)
    floored_name = next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(helper.make_tensor_value_info(floored_name, TensorProto.FLOAT, None))
    floored = _run(model, feeds)[1]
    masked = feeds["scores"] + feeds["mask"]
    expected = np.maximum(masked, masked[..., :1] - MARGIN)
    np.testing.assert_array_equal(floored[:3], expected[:3])
    assert (floored[0, ..., 10:] > -1e3).all()  # right padding: floored
    np.testing.assert_array_equal(floored[1], masked[1])  # left padding: first key masked, nothing floored


def test_only_masked_float32_softmaxes_are_floored_once():
    model = _attention_graph()
    assert floor_masked_softmax(model) == 1
    assert floor_masked_softmax(model) == 0  # already floored: it reads the floor's Max
    plain = _attention_graph()
    plain.graph.node[1].input[0] = "scores"  # a Softmax of unmasked scores (a ViT's)
    assert floor_masked_softmax(plain) == 0
    assert floor_masked_softmax(_attention_graph(opset=11)) == 0  # older Softmax axis semantics


class MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        bias = (1.0 - mask[:, None, :]) * torch.finfo(torch.float32).min
        return torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v


def _floor_nodes(path) -> int:
    return sum(n.op_type == "Max" and n.name.startswith("mixq_softmax_floor") for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize(("slow", "runtime", "floored"), [(True, None, 1), (True, "ort", 1), (False, None, 0),
                                                          (True, "openvino", 0)])
def test_export_floors_for_onnx_runtime_where_this_cpu_needs_it(tmp_path, monkeypatch, slow, runtime, floored):
    monkeypatch.setattr(softmax, "underflow_is_slow", lambda: slow)
    model = MaskedAttention().eval()
    x, mask = torch.randn(2, SEQ, DIM), torch.ones(2, SEQ)
    mask[0, 11:] = 0
    path = mixq.export_onnx(model, (x, mask), tmp_path / "attention.onnx", runtime=runtime)
    assert _floor_nodes(path) == floored
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), (x, mask), strict=True)})[0]
    np.testing.assert_allclose(got, model(x, mask).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(("slow", "asked", "floored"), [(True, False, 0), (False, True, 1)])
def test_softmax_floor_overrides_the_machines_choice(tmp_path, monkeypatch, slow, asked, floored):
    monkeypatch.setattr(softmax, "underflow_is_slow", lambda: slow)
    path = mixq.export_onnx(MaskedAttention().eval(), (torch.randn(1, SEQ, DIM), torch.ones(1, SEQ)),
                            tmp_path / "attention.onnx", softmax_floor=asked)
    assert _floor_nodes(path) == floored


def test_a_runtime_for_another_format_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="runs tflite files, not onnx"):
        mixq.export_onnx(MaskedAttention(), (torch.randn(1, SEQ, DIM), torch.ones(1, SEQ)),
                         tmp_path / "a.onnx", runtime="litert")
    with pytest.raises(TypeError, match="softmax_floor must be True, False or None"):
        mixq.export_onnx(MaskedAttention(), (torch.randn(1, SEQ, DIM), torch.ones(1, SEQ)),
                         tmp_path / "a.onnx", softmax_floor="yes")
    assert not list(tmp_path.iterdir())


def test_the_file_runtime_follows_the_quantization_runtime():
    class Config:
        runtime = "openvino:f32"

    model = nn.Linear(2, 2)
    assert backend.file_runtime(model, "onnx").name == "ort"
    model.mixq_config = Config()
    assert backend.file_runtime(model, "onnx").label == "openvino:f32"
    assert backend.file_runtime(model, "onnx", "ort").name == "ort"
    assert backend.file_runtime(model, "tflite").name == "litert"  # quantized for another format: the default


def test_the_probe_answers_once_per_process():
    softmax.underflow_is_slow.cache_clear()
    first = softmax.underflow_is_slow()
    assert isinstance(first, bool)
    assert softmax.underflow_is_slow() is first and softmax.underflow_is_slow.cache_info().hits == 1
