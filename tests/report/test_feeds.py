"""Bench inputs: one set of shapes for every file (symbolic axes bound by name), values each input accepts."""

from __future__ import annotations

import numpy as np
import pytest

from mixq.report import ort_session
from mixq.report.feeds import GraphInput, cast_feeds, graph_inputs, index_limits, plan_shapes, synthesize, unfit_shape
from tests.report.token_graphs import token_model

TOKENS = [GraphInput("input_ids", np.int64, ("batch", "sequence")),
          GraphInput("attention_mask", np.int64, ("batch", "sequence"))]


def test_a_given_shape_binds_the_axes_other_inputs_share():
    shapes = plan_shapes({"a.onnx": TOKENS}, {"input_ids": (2, 128)})
    assert shapes == {"input_ids": (2, 128), "attention_mask": (2, 128)}


def test_fixed_dimensions_of_one_file_size_the_symbolic_axes_of_all():
    fixed = [GraphInput("input_ids", np.int64, ("batch", 64)), GraphInput("attention_mask", np.int64, ("batch", 64))]
    shapes = plan_shapes({"a.onnx": TOKENS, "b.onnx": fixed}, batch=8)
    assert shapes == {"input_ids": (8, 64), "attention_mask": (8, 64)}
    assert unfit_shape(fixed, shapes) is None
    assert unfit_shape(fixed, {"input_ids": (8, 32), "attention_mask": (8, 32)}) == (
        "input 'input_ids' has axis 1 fixed at 64, not 32")


def test_a_symbolic_axis_nothing_sizes_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"axis 1 of input 'input_ids' is symbolic \('sequence'\).*"
                                         r"--shape input_ids=4x128"):
        plan_shapes({"a.onnx": TOKENS}, batch=4)


@pytest.mark.parametrize("other,message", [
    pytest.param([TOKENS[0]], "takes inputs", id="names"),
    pytest.param([TOKENS[0], GraphInput("attention_mask", np.int64, ("batch", "sequence", 1))], "rank 2 in a",
                 id="rank"),
])
def test_files_with_other_inputs_are_not_compared(other, message):
    with pytest.raises(ValueError, match=message):
        plan_shapes({"a.onnx": TOKENS, "b.onnx": other}, {"input_ids": (1, 8)})


def test_given_shapes_are_checked_against_the_inputs():
    with pytest.raises(ValueError, match="'input_idz', which is not an input"):
        plan_shapes({"a.onnx": TOKENS}, {"input_idz": (1, 8)})
    with pytest.raises(ValueError, match="has rank 3"):
        plan_shapes({"a.onnx": TOKENS}, {"input_ids": (1, 8, 2)})


def test_values_each_input_accepts():
    inputs = [*TOKENS, GraphInput("token_type_ids", np.int64, ("batch", "sequence")),
              GraphInput("position_ids", np.int64, ("batch", "sequence")), GraphInput("pixels", np.float16, (2, 3))]
    shapes = {"input_ids": (3, 500), "attention_mask": (3, 500), "token_type_ids": (3, 500),
              "position_ids": (3, 500), "pixels": (2, 3)}
    feeds = synthesize(inputs, shapes, {"input_ids": 7})
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() == 6, "token ids cover [0, vocab)"
    assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
    assert (feeds["position_ids"] == np.arange(500)).all() and feeds["pixels"].dtype == np.float16
    assert {k: v.shape for k, v in feeds.items()} == shapes
    as32 = cast_feeds(feeds, [GraphInput(i.name, np.int32 if i.dtype is np.int64 else i.dtype, i.dims)
                              for i in inputs])
    assert as32["input_ids"].dtype == np.int32 and as32["pixels"].dtype == np.float16


@pytest.mark.parametrize("quantized", [False, True], ids=["float-table", "int8-table"])
def test_index_limits_finds_the_vocabulary_the_ids_index(tmp_path, quantized):
    path = token_model(tmp_path / "t.onnx", vocab=23, quantized_table=quantized)
    assert index_limits(path, ["input_ids", "attention_mask"]) == {"input_ids": 23, "attention_mask": None}
    session = ort_session(path)
    inputs = graph_inputs(session)
    shapes = plan_shapes({"t": inputs}, {"input_ids": (2, 300)})
    feeds = synthesize(inputs, shapes, index_limits(path, ["input_ids"]))
    (pooled,) = session.run(None, feeds)  # every id is in range, or ONNX Runtime's Gather would fail
    assert pooled.shape == (2, 4) and np.isfinite(pooled).all()
