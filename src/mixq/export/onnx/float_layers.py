"""Keep a float layer between int8 layers float in ONNX Runtime, as mixq simulates it.

ONNX Runtime's ``WeightBiasQuantization`` optimizer (on in every session at its default optimisation level) takes a
``Conv`` / ``ConvTranspose`` / ``Gemm`` whose input comes from a per-tensor ``DequantizeLinear``, whose output goes
to a ``QuantizeLinear`` (through ``Relu`` / ``Clip`` at most) and whose weight is a float32 initializer, and
quantizes that weight itself: symmetric int8 with one scale for the whole tensor, the bias to int32. The layer then
runs as ``QLinearConv``. That is exactly how a layer mixq keeps float among static ones is exported (``exclude``, a
``"fp32"`` override, runtime-aware precision, the attention-logit rule), so without this pass ORT would silently
run it in int8, coarser than any int8 layer mixq makes (per-tensor, not per-channel weights), while mixq's
simulation and summary say float: an EfficientNet-Lite0 file with one depthwise conv kept float agreed with its
simulation on 0.94-0.97 of the argmaxes.

:func:`keep_float_layers_float` gives each such layer its own copy of the input's ``DequantizeLinear`` with the scale
and zero point repeated per input channel (``axis=1``; after any Reshape/Flatten/Transpose/Squeeze/Unsqueeze/MaxPool
on the way, which ORT would move the ``DequantizeLinear`` through, repeated on the integer codes): the same numbers,
which ORT's optimizer does not match (it requires a per-tensor scale), so the layer stays a float ``Conv`` /
``Gemm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm"})
# ops ORT moves a DequantizeLinear through (QDQ propagation) before its optimizer looks: exact on the integers too
_PASS_THROUGH = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "MaxPool"})
_ACTIVATIONS = frozenset({"Relu", "Clip"})  # what ORT's optimizer looks through on the way to the QuantizeLinear


def _consumers(graph: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _reaches_quantize(node: Any, consumers: dict[str, list[Any]], outputs: set[str]) -> bool:
    """Whether ``node``'s single output leads, without branching, to a QuantizeLinear (through Relu/Clip)."""
    current = node
    while len(current.output) == 1 and current.output[0] not in outputs:
        after = consumers.get(current.output[0], [])
        if len(after) != 1:
            return False
        if after[0].op_type == "QuantizeLinear":
            return True
        if after[0].op_type not in _ACTIVATIONS:
            return False
        current = after[0]
    return False


def _input_channels(node: Any, weight: tuple[int, ...]) -> int | None:
    """How many channels ``node``'s input has along axis 1, from its ``weight`` shape (None where that axis is not
    the weight's)."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return int(weight[1] * group)
    if node.op_type == "ConvTranspose":
        return int(weight[0])
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return None if trans_a else int(weight[1 if trans_b else 0])


def _dequantized_source(name: str, producers: dict[str, Any],
                        consumers: dict[str, list[Any]]) -> tuple[Any, list[Any]] | None:
    """The DequantizeLinear that ``name`` is computed from, and the single-consumer shape ops (or MaxPool) between
    them in order, or None."""
    chain = []
    node = producers.get(name)
    while node is not None and node.op_type in _PASS_THROUGH and len(consumers.get(node.output[0], [])) == 1:
        chain.insert(0, node)
        node = producers.get(node.input[0])
    return (node, chain) if node is not None and node.op_type == "DequantizeLinear" else None


def keep_float_layers_float(model: Any) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``, in place) so ONNX Runtime cannot quantize its float Conv /
    ConvTranspose / Gemm layers that sit between Dequantize/Quantize pairs (see the module docstring); the number
    of layers changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    changed = 0
    for node in list(graph.node):
        if node.op_type not in _LAYERS or len(node.input) < 2:
            continue
        source = _dequantized_source(node.input[0], producers, consumers)
        weight = initializers.get(node.input[1])
        if source is None or weight is None or weight.data_type != 1:
            continue
        dq, chain = source
        scale, zero = (initializers.get(n) for n in (list(dq.input) + [""])[1:3])
        if scale is None or numpy_helper.to_array(scale).size != 1 or not _reaches_quantize(node, consumers, outputs):
            continue
        channels = _input_channels(node, tuple(weight.dims))  # the shape only: no copy of the weight
        if channels is None:
            continue
        base = f"{node.name or node.output[0]}_mixq_float_input"
        scale_value = numpy_helper.to_array(scale).reshape(())
        repeated = [numpy_helper.from_array(np.full(channels, scale_value, scale_value.dtype), f"{base}_scale")]
        if zero is not None:
            zero_value = numpy_helper.to_array(zero).reshape(())
            repeated.append(numpy_helper.from_array(np.full(channels, zero_value, zero_value.dtype), f"{base}_zp"))
        graph.initializer.extend(repeated)
        codes, added = dq.input[0], []
        for i, op in enumerate(chain):  # the shape ops on the integer codes, then the per-channel dequantize
            twin = helper.make_node(op.op_type, [codes, *op.input[1:]], [f"{base}_{i}"], name=f"{base}_{i}")
            twin.attribute.extend(op.attribute)
            added.append(twin)
            codes = twin.output[0]
        added.append(helper.make_node("DequantizeLinear", [codes, *(t.name for t in repeated)], [base], axis=1,
                                      name=base))
        at = list(graph.node).index(node)
        for offset, new_node in enumerate(added):
            graph.node.insert(at + offset, new_node)
        node.input[0] = base
        _drop_dead(graph, [dq, *chain], outputs)
        changed += 1
    return changed


def _drop_dead(graph: Any, nodes: list[Any], outputs: set[str]) -> None:
    """Remove those of ``nodes`` (a DequantizeLinear and the shape ops after it) that nothing reads any more: ONNX
    Runtime runs a node whose output is unused, so the replaced path would cost a dequantize of the whole input."""
    for node in reversed(nodes):
        read = {name for other in graph.node for name in other.input} | outputs
        if not any(out in read for out in node.output):
            graph.node.remove(node)
