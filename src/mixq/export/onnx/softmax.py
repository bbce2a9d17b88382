"""Keep ONNX Runtime's Softmax off its denormal slow path on masked attention rows, without changing its outputs.

Attention adds a mask of huge negative values (``finfo.min``, ``-1e4``, ``-inf``) to the scores of padded or future
keys. ONNX Runtime's Softmax computes ``exp(x - max)`` for those entries too; the result underflows through
denormal numbers, which Intel CPUs compute in microcode: on a Sapphire Rapids Xeon a Softmax over rows holding masked
entries runs 2.7x slower than over unmasked rows, 28% of an int8 MiniLM's time at batch 32 (``session.
set_denormal_as_zero`` does not help: it reaches the calling thread only for the process's first session).

mixq floors each row of a masked Softmax input at its first key's score minus 30 (``Max(x, x[..., :1] - 30)``;
that score is in the row, so the floor is at least 30 below the row's maximum). An entry raised to the floor had
``exp(x - max) <= e^-30 = 9e-14`` and now has that at most: every row's sum is unchanged in float32, masked
probabilities are ~1e-14, below what float32 resolves next to the others, instead of 0, and the outputs downstream
are the same (bit for bit on all-MiniLM-L6-v2, float and int8 files, padded or not). No entry underflows while a
row's maximum is within ~50 of its first key's score (otherwise that row is merely as slow as before); a row whose
first key is masked (``-inf`` or ``finfo.min``: left padding) keeps its entries as they were, and a NaN in a row
stays a NaN (ONNX Runtime's ``Max`` propagates it).

Whether the slow path exists is measured once per process on this machine (:func:`underflow_is_slow`: the same
Softmax on masked and on floored rows); where it does not (AMD EPYC: no denormal penalty), the file is left as it
is, since the floor costs one pass over the scores (11-18% of an int8 MiniLM with no padding on the Xeon).
OpenVINO fuses attention into its own kernel, which the floor would break: files exported for it are not floored.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from typing import Any

MARGIN = 30.0  # e^-30 = 9.4e-14: below float32 resolution next to a row sum >= 1, even summed over 1e5 entries
SLOW_RATIO = 1.5  # masked rows this many times slower than floored ones count as the slow path
_FLOAT = 1  # onnx.TensorProto.FLOAT
_SHARED = "mixq_softmax_floor"
log = logging.getLogger(__name__)


def _float32_values(graph: Any) -> set[str]:
    """Names of float32 tensors the graph declares (inputs, value_info, outputs)."""
    return {v.name for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.tensor_type.elem_type == _FLOAT}


def _masked_softmaxes(model: Any) -> list[Any]:
    """Main-graph float32 Softmax nodes (opset >= 13 axis semantics) whose input is an ``Add`` or ``Where``: a
    mask applied to scores. Softmaxes already floored read a ``Max`` and are skipped."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        return []
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    floats = _float32_values(graph)
    return [node for node in graph.node
            if node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and node.input[0] in floats
            and getattr(producers.get(node.input[0]), "op_type", None) in ("Add", "Where")]


def _add_shared_constants(graph: Any) -> None:
    import numpy as np
    from onnx import numpy_helper

    if any(t.name == f"{_SHARED}_margin" for t in graph.initializer):
        return
    for suffix, value in (("margin", np.float32(MARGIN)), ("start", np.array([0], np.int64)),
                          ("end", np.array([1], np.int64))):
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{_SHARED}_{suffix}"))


def _floor_nodes(node: Any, prefix: str) -> tuple[list[Any], str]:
    """The nodes computing ``Max(x, x[..., :1] - MARGIN)`` along Softmax ``node``'s axis; the floored tensor."""
    from onnx import helper

    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    x, c = node.input[0], _SHARED
    nodes = [
        helper.make_node("Constant", [], [f"{prefix}_axis"], value_ints=[axis], name=f"{prefix}_axis"),
        helper.make_node("Slice", [x, f"{c}_start", f"{c}_end", f"{prefix}_axis"], [f"{prefix}_first"],
                         name=f"{prefix}_first"),
        helper.make_node("Sub", [f"{prefix}_first", f"{c}_margin"], [f"{prefix}_floor"], name=f"{prefix}_floor"),
        helper.make_node("Max", [x, f"{prefix}_floor"], [f"{prefix}_out"], name=f"{prefix}_max"),
    ]
    return nodes, f"{prefix}_out"


def floor_masked_softmax(model: Any) -> int:
    """Floor the input of every masked float32 Softmax of ``model`` (an ``onnx.ModelProto``, in place) as the
    module docstring describes; returns how many. Running it twice changes nothing the second time."""
    targets = {node.output[0] for node in _masked_softmaxes(model)}  # outputs are unique (SSA)
    if not targets:
        return 0
    graph = model.graph
    _add_shared_constants(graph)
    nodes = []
    for node in graph.node:
        if node.output[0] in targets:
            floor, floored = _floor_nodes(node, f"{_SHARED}{len(nodes)}")
            nodes += floor
            node.input[0] = floored
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "softmax_probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@functools.cache
def underflow_is_slow(rounds: int = 7) -> bool:
    """Whether ONNX Runtime's Softmax on this machine runs rows with masked entries (``finfo.min`` added) at least
    ``SLOW_RATIO`` times slower than the same rows floored as :func:`floor_masked_softmax` does (one thread,
    interleaved rounds, median; ~0.1 s once per process)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(_probe_model(), options, providers=["CPUExecutionProvider"])
    scores = np.random.default_rng(0).standard_normal((8, 128, 128)).astype(np.float32)
    masked = scores.copy()
    masked[..., 32:] = np.finfo(np.float32).min
    floored = np.maximum(masked, scores[..., :1] - MARGIN)
    times: dict[str, list[float]] = {"masked": [], "floored": []}
    for _ in range(rounds):
        for name, x in (("masked", masked), ("floored", floored)):
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["masked"]) / statistics.median(times["floored"])
    log.info("ONNX Runtime Softmax on masked rows: %.2fx the time of floored rows on this CPU", ratio)
    return ratio >= SLOW_RATIO
