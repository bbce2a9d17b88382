"""Tiny hand-built ONNX graphs shaped like a text encoder's front end: token ids index an embedding table, an
attention mask weights the rows (so out-of-range ids or a wrong mask make ONNX Runtime fail or differ)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def token_model(path: Path, vocab: int = 30, batch: int | str = "batch", seq: int | str = "sequence",
                ids_name: str = "input_ids", mask_name: str | None = "attention_mask",
                quantized_table: bool = False) -> Path:
    """``sum(table[ids] * mask[..., None], axis=1)`` with dims ``[batch, seq]``; ``quantized_table`` stores the
    table as int8 behind a DequantizeLinear, as mixq exports quantized embeddings."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((vocab, 4)).astype(np.float32)
    nodes, inits = [], [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")]
    if quantized_table:
        inits += [numpy_helper.from_array(np.clip(np.round(table * 40), -127, 127).astype(np.int8), "table_q"),
                  numpy_helper.from_array(np.array(1 / 40, dtype=np.float32), "table_scale")]
        nodes.append(helper.make_node("DequantizeLinear", ["table_q", "table_scale"], ["table"]))
    else:
        inits.append(numpy_helper.from_array(table, "table"))
    inputs = [helper.make_tensor_value_info(ids_name, TensorProto.INT64, [batch, seq])]
    nodes.append(helper.make_node("Gather", ["table", ids_name], ["rows"]))
    if mask_name:
        inputs.append(helper.make_tensor_value_info(mask_name, TensorProto.INT64, [batch, seq]))
        nodes += [helper.make_node("Cast", [mask_name], ["maskf"], to=TensorProto.FLOAT),
                  helper.make_node("Unsqueeze", ["maskf", "last"], ["mask3"]),
                  helper.make_node("Mul", ["rows", "mask3"], ["weighted"])]
    nodes.append(helper.make_node("ReduceSum", ["weighted" if mask_name else "rows", "axis1"], ["pooled"],
                                  keepdims=0))
    graph = helper.make_graph(nodes, "tokens", inputs,
                              [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
