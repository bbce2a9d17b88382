"""Layer-level conformance: every quantize step ONNX Runtime runs in a file, fed the runtime's *own* input tensor,
gives the codes (and, for ``DynamicQuantizeLinear``, the scale and zero point) mixq's arithmetic gives on that same
tensor (``mixq.quant.primitives``), bit for bit.

The zoo's end-to-end check compares the simulation with the runtime from the same model input. On a model that
amplifies a last-bit difference of a float op (the runtime's Sigmoid vs torch's) into int8 codes, the two drift
apart without either's quantization arithmetic being wrong; this check, which takes each quantize step's input
from the runtime itself, is what can still be compared there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from mixq.quant.primitives import dynamic_qparams, quantize

QUANTIZE_OPS = ("QuantizeLinear", "DynamicQuantizeLinear")


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs, by name."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (types from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name in present:
            continue
        if name not in known:
            raise ValueError(f"shape inference gives no type for tensor {name!r}")
        elem = known[name].type.tensor_type.elem_type
        out.graph.output.append(helper.make_tensor_value_info(name, elem, None))
        present.add(name)
    return out


def _quantize_param(node: onnx.NodeProto, index: int, values: dict[str, np.ndarray]) -> torch.Tensor | None:
    name = node.input[index] if len(node.input) > index else ""
    return torch.from_numpy(np.array(values[name])) if name else None


def _mismatch(node: onnx.NodeProto, got: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> str:
    """Why the runtime's result of quantize ``node`` differs from mixq's on the same input, or ""."""
    x = torch.from_numpy(np.array(got[node.input[0]]))
    if node.op_type == "DynamicQuantizeLinear":
        scale, zero_point = dynamic_qparams(x)
        runtime = [got[name] for name in node.output]
        if float(scale) != float(runtime[1]) or int(zero_point) != int(runtime[2]):
            return (f"{node.name}: scale/zero point {float(scale)!r}/{int(zero_point)} != the runtime's "
                    f"{float(runtime[1])!r}/{int(runtime[2])}")
        codes = quantize(x, scale, zero_point).numpy()
    else:
        scale, zero_point = _quantize_param(node, 1, values), _quantize_param(node, 2, values)
        if zero_point is None:
            zero_point = torch.zeros((), dtype=torch.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if scale.dim() else None
        codes = quantize(x, scale, zero_point, axis=axis).numpy()
        runtime = [got[node.output[0]]]
    differ = int(np.count_nonzero(codes != runtime[0]))
    return f"{node.name}: {differ} of {codes.size} codes differ" if differ else ""


def quantize_nodes_match(path: Path, feeds: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """``(how many quantize nodes were checked, what differs)``: each ``QuantizeLinear`` (constant scale and zero
    point) and ``DynamicQuantizeLinear`` of the ONNX file at ``path``, run by ONNX Runtime on ``feeds``, compared
    with mixq's arithmetic on the input tensor the runtime itself gave that node."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    values = _constants(model)
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZE_OPS]
    nodes = [n for n in nodes if n.op_type == "DynamicQuantizeLinear" or all(i in values for i in n.input[1:] if i)]
    inputs = {i.name for i in model.graph.input}
    names = [name for n in nodes for name in [n.input[0], *n.output] if name not in values and name not in inputs]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(_with_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = [o.name for o in session.get_outputs()]
    got = {**feeds, **dict(zip(wanted, session.run(wanted, feeds), strict=True))}
    return len(nodes), [why for n in nodes if (why := _mismatch(n, got, values))]
