"""Keep ONNX Runtime's CPU provider on its fast LayerNorm: a residual ``Add -> LayerNormalization`` is written so that
ONNX Runtime's ``SkipLayerNormFusion`` does not turn it into ``SkipLayerNormalization``.

ONNX Runtime fuses an ``Add`` of two 3-D tensors that feeds a ``LayerNormalization`` into its contrib
``SkipLayerNormalization`` at the default optimisation level. On the CPUs measured that kernel is several times
slower than the ``Add`` and ``LayerNormalization`` it replaces at BERT shapes (2.4-2.8x on a Xeon with AMX, 5-7x on
an AVX-512 EPYC without it, ONNX Runtime 1.32: ``docs/benchmarks.md``), and it rounds differently. The fusion only
matches when the LayerNorm reads the ``Add`` directly, so mixq puts a zero-copy ``Unsqueeze`` (a leading axis of 1)
between them and a ``Squeeze`` after the LayerNorm: the same operators compute the same values, bit for bit, in any
session, with no session option for the user to remember.
"""

from __future__ import annotations

from typing import Any

_AXIS = "mixq_leading_axis"  # the int64 [0] initializer the Unsqueeze/Squeeze pairs read


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _unfusable(node: Any, producers: dict[str, Any]) -> bool:
    """A LayerNormalization reading an Add directly, with only its main output used (the mean and inverse standard
    deviation outputs would change rank too)."""
    return (node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx")
            and producers.get(node.input[0]) is not None and producers[node.input[0]].op_type == "Add"
            and all(not name for name in node.output[1:]))


def keep_layernorm_unfused(model: Any) -> int:
    """Rewrite every ``Add -> LayerNormalization`` of ``model``'s main graph (an ``onnx.ModelProto``, in place) as
    ``Add -> Unsqueeze(0) -> LayerNormalization -> Squeeze(0)``; returns how many. A non-negative ``axis`` is
    shifted by one, so every LayerNorm normalises the same axes as before."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = _producers(graph)
    nodes, count = [], 0
    for node in graph.node:
        if not _unfusable(node, producers):
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        lifted, normed = f"{x}_mixq_lifted_{count}", f"{y}_mixq_lifted"
        for attr in node.attribute:
            if attr.name == "axis" and attr.i >= 0:
                attr.i += 1
        node.input[0], node.output[0] = lifted, normed
        nodes += [helper.make_node("Unsqueeze", [x, _AXIS], [lifted], name=f"{node.name}_mixq_unsqueeze"), node,
                  helper.make_node("Squeeze", [normed, _AXIS], [y], name=f"{node.name}_mixq_squeeze")]
        count += 1
    if count:
        if all(init.name != _AXIS for init in graph.initializer):
            graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), _AXIS))
        del graph.node[:]
        graph.node.extend(nodes)
    return count
