"""Time one layer's float kernel against the int8 form mixq's ONNX lowering gives it, in ONNX Runtime.

Each form is a tiny one-op graph (``onnx.helper``, weights random) at the kernel's shape, as ``translations``
emits it and ORT fuses it:

* static Conv: uint8 in -> DequantizeLinear -> Conv(DQ int8 weight, DQ int32 bias) -> QuantizeLinear -> uint8 out,
  which ORT runs as ``QLinearConv`` (integer in and out: the layer between int8 neighbours); a layer whose input
  is a float tensor (``Kernel.float_input``: the model's input, a float op's output) quantizes it first;
* static Linear: the same around MatMul (``QLinearMatMul``) without a bias, ``MatMulIntegerToFloat`` with one;
* dynamic Linear / Conv: DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul [-> Add];
* float: Conv / MatMul [+ Add] on float32; for a static kernel between the same neighbours, so with the
  DequantizeLinear of an int8 input and the QuantizeLinear of its output that a float layer there pays (a float
  EfficientNet-Lite0 stem timed without them looked faster than its QLinearConv alone, and the whole file was 5-8 %
  slower at batch 8 with it float).

Layout: where ORT runs a static conv's ``QLinearConv`` channels-last (its NHWC transformer, on x86), a chain of
int8 layers stays channels-last and only its float boundaries pay a ``Transpose``. So there the int8 form is the
channels-last ``QLinearConv`` alone (its input comes and its output goes channels-last), and the float form pays
the Transposes from and back to its int8 neighbours' layout. A one-op graph in ORT's default layout would charge
the int8 form two Transposes the model never runs and spare the float form the two it does: for 8x32x112x112
uint8 codes a Transpose costs about as much as the depthwise conv itself.

Both sessions run side by side in interleaved rounds; each form's fastest round is the ``KernelCost``.
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mixq.export.onnx.float_layers import keep_float_layers_float
from mixq.quant.runtime_costs import Kernel, KernelCost

_OPSET = 18
_ACT = {"uint8": (np.uint8, 128), "int8": (np.int8, 0)}
_X_SCALE = np.float32(0.05)  # the int8 input's scale (the output's is 0.1); any value gives the same kernels


def _model(nodes: list, inputs: list, output_type: int, inits: dict[str, np.ndarray]) -> Any:
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, "kernel", inputs, [helper.make_tensor_value_info("y", output_type, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", _OPSET), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _weights(kernel: Kernel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random float weight, its per-channel int8 form and scale, and a bias."""
    if kernel.op == "conv":
        shape = (kernel.out_channels, kernel.input_shape[1] // kernel.groups, *kernel.kernel)
    else:
        shape = (kernel.out_channels, kernel.input_shape[1])
    w = rng.standard_normal(shape).astype(np.float32)
    scale = (np.abs(w).reshape(shape[0], -1).max(1) / 127).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(-1, *[1] * (w.ndim - 1))), -127, 127).astype(np.int8)
    return w, q, scale, rng.standard_normal(kernel.out_channels).astype(np.float32)


def _conv_attrs(kernel: Kernel) -> dict[str, Any]:
    return dict(kernel_shape=list(kernel.kernel), strides=list(kernel.stride), pads=list(kernel.padding) * 2,
                dilations=list(kernel.dilation), group=kernel.groups)


def _activations(kernel: Kernel) -> tuple[int, dict[str, np.ndarray]]:
    """The ONNX element type of ``kernel``'s int8 activations, and the scales and zero points of its input
    (``xs``, ``xz``) and output (``ys``, ``yz``)."""
    from onnx import helper

    dtype, zp = _ACT[kernel.activation]
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), {
        "xs": np.array(_X_SCALE), "xz": np.array(zp, dtype), "ys": np.array(np.float32(0.1)), "yz": np.array(zp, dtype)}


def float_model(kernel: Kernel, rng: np.random.Generator) -> Any:
    """The float form: Conv, or MatMul [+ Add]; a static kernel's between int8 neighbours (int8 in and out through
    DequantizeLinear / QuantizeLinear), as a float layer among static ones is exported."""
    from onnx import TensorProto, helper

    w, _, _, b = _weights(kernel, rng)
    inits: dict[str, np.ndarray] = {"w": w} | ({"b": b} if kernel.bias else {})
    if kernel.op == "conv":
        nodes = [helper.make_node("Conv", ["x", "w", "b"] if kernel.bias else ["x", "w"], ["y"],
                                  **_conv_attrs(kernel))]
    else:
        inits["w"] = np.ascontiguousarray(w.T)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if kernel.bias else "y"])]
        nodes += [helper.make_node("Add", ["m", "b"], ["y"])] if kernel.bias else []
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(kernel.input_shape))
    if kernel.mode != "static":
        return _model(nodes, [x], TensorProto.FLOAT, inits)
    elem, qparams = _activations(kernel)
    inits |= {"ys": qparams["ys"], "yz": qparams["yz"]}
    for node in nodes:  # the float op writes what is quantized for the int8 layer after it
        node.output[:] = ["yf" if o == "y" else o for o in node.output]
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    if not kernel.float_input:  # an int8 producer: the float op reads its output dequantized
        inits |= {"xs": qparams["xs"], "xz": qparams["xz"]}
        for node in nodes[:-1]:
            node.input[:] = ["xd" if i == "x" else i for i in node.input]
        nodes.insert(0, helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]))
        x = helper.make_tensor_value_info("xq", elem, list(kernel.input_shape))
    if kernel.op == "conv" and channels_last(kernel):  # from and back to the int8 neighbours' layout
        nodes[-1].output[:] = ["yq"]
        nodes.append(helper.make_node("Transpose", ["yq"], ["y"], perm=_to_channels_last(kernel)))
        if not kernel.float_input:
            nodes[0].input[0] = "xt"
            nodes.insert(0, helper.make_node("Transpose", ["xq"], ["xt"], perm=_to_channels_first(kernel)))
            x = helper.make_tensor_value_info("xq", elem, _nhwc(kernel.input_shape))
    model = _model(nodes, [x], elem, inits)
    keep_float_layers_float(model)  # as the export keeps it float: ORT would quantize its weight otherwise
    return model


def _nhwc(shape: tuple[int, ...]) -> list[int]:
    return [shape[0], *shape[2:], shape[1]]


def _to_channels_last(kernel: Kernel) -> list[int]:
    rank = len(kernel.input_shape)
    return [0, *range(2, rank), 1]


def _to_channels_first(kernel: Kernel) -> list[int]:
    rank = len(kernel.input_shape)
    return [0, rank - 1, *range(1, rank - 1)]


@functools.cache
def _runs_channels_last(activation: str, spatial_dims: int) -> bool:
    """True when this ORT rewrites a static conv of this activation dtype to a channels-last ``QLinearConv``
    (read off the graph it optimizes the one-op int8 form into)."""
    import onnx

    kernel = Kernel("conv", "static", (1, 4, *[6] * spatial_dims), 4, (1,) * spatial_dims, (1,) * spatial_dims,
                    (0,) * spatial_dims, (1,) * spatial_dims, activation=activation)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "optimized.onnx"
        _session(_static(kernel, np.random.default_rng(0)), 1, optimized_path=path)
        nodes = onnx.load(path).graph.node
    return any(n.op_type == "QLinearConv" and any(a.name == "channels_last" and a.i == 1 for a in n.attribute)
               for n in nodes)


def channels_last(kernel: Kernel) -> bool:
    """True when ORT runs ``kernel``'s int8 form channels-last (a static conv, see the module docstring)."""
    return kernel.op == "conv" and kernel.mode == "static" and _runs_channels_last(kernel.activation,
                                                                                   len(kernel.kernel))


def int8_model(kernel: Kernel, rng: np.random.Generator) -> Any:
    """The int8 form mixq exports for ``kernel``, as ORT runs it among int8 neighbours (see the module
    docstring)."""
    if channels_last(kernel):
        return _static_channels_last(kernel, rng)
    return (_static if kernel.mode == "static" else _dynamic)(kernel, rng)


def _static_channels_last(kernel: Kernel, rng: np.random.Generator) -> Any:
    """The channels-last ``QLinearConv`` ORT rewrites a static conv into, reading and writing channels-last codes
    (a float input is quantized and transposed first, as the model's first int8 layer does)."""
    from onnx import TensorProto, helper

    _, q, scale, b = _weights(kernel, rng)
    elem, qparams = _activations(kernel)
    inits: dict[str, np.ndarray] = {"wq": q, "ws": scale, "wz": np.array(0, np.int8), **qparams}
    inputs = ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"]
    if kernel.bias:
        inits["bq"] = np.round(b / (_X_SCALE * scale)).astype(np.int32)
        inputs.append("bq")
    nodes = [helper.make_node("QLinearConv", inputs, ["y"], domain="com.microsoft", channels_last=1,
                              **_conv_attrs(kernel))]
    x = helper.make_tensor_value_info("xq", elem, _nhwc(kernel.input_shape))
    if kernel.float_input:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(kernel.input_shape))
        nodes[:0] = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xf"]),
                     helper.make_node("Transpose", ["xf"], ["xq"], perm=_to_channels_last(kernel))]
    return _model(nodes, [x], elem, inits)


def _static(kernel: Kernel, rng: np.random.Generator) -> Any:
    from onnx import helper

    _, q, scale, b = _weights(kernel, rng)
    elem, qparams = _activations(kernel)
    inits: dict[str, np.ndarray] = {"wq": q if kernel.op == "conv" else np.ascontiguousarray(q.T), "ws": scale,
                                    **qparams}
    x = helper.make_tensor_value_info("xq", elem, list(kernel.input_shape))
    quantize_out = helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])
    quantize_in = []
    if kernel.float_input:  # no int8 producer: the layer quantizes its float input itself
        x = helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(np.float32)),
                                          list(kernel.input_shape))
        quantize_in = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"])]
    if kernel.op == "linear" and kernel.bias:
        inits["b"] = b
        node = helper.make_node("MatMulIntegerToFloat", ["xq", "wq", "xs", "ws", "xz", "", "b"], ["yf"],
                                domain="com.microsoft")
        return _model([*quantize_in, node, quantize_out], [x], elem, inits)
    nodes = [helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=0 if kernel.op == "conv" else 1)]
    if kernel.op == "conv":
        inputs = ["xd", "wd"]
        if kernel.bias:
            bias_scale = (_X_SCALE * scale).astype(np.float32)
            inits |= {"bq": np.round(b / bias_scale).astype(np.int32), "bs": bias_scale}
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], axis=0))
            inputs.append("bd")
        nodes.append(helper.make_node("Conv", inputs, ["yf"], **_conv_attrs(kernel)))
    else:
        nodes.append(helper.make_node("MatMul", ["xd", "wd"], ["yf"]))
    return _model([*quantize_in, *nodes, quantize_out], [x], elem, inits)


def _dynamic(kernel: Kernel, rng: np.random.Generator) -> Any:
    from onnx import TensorProto, helper

    _, q, scale, b = _weights(kernel, rng)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(kernel.input_shape))
    inits: dict[str, np.ndarray] = {"wq": q if kernel.op == "conv" else np.ascontiguousarray(q.T), "ws": scale}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"])]
    if kernel.op == "conv":
        nodes.append(helper.make_node("ConvInteger", ["xq", "wq", "xz"], ["acc"], **_conv_attrs(kernel)))
        inits["shape"] = np.array([-1] + [1] * len(kernel.kernel), np.int64)
        nodes += [helper.make_node("Mul", ["xs", "ws"], ["s0"]), helper.make_node("Reshape", ["s0", "shape"], ["s"])]
        bias = b.reshape(-1, *[1] * len(kernel.kernel))
    else:
        nodes.append(helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"]))
        nodes.append(helper.make_node("Mul", ["xs", "ws"], ["s"]))
        bias = b
    nodes += [helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["accf", "s"], ["m" if kernel.bias else "y"])]
    if kernel.bias:
        inits["b"] = bias
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    return _model(nodes, [x], TensorProto.FLOAT, inits)


def _session(model: Any, threads: int, optimized_path: Path | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _feed(session: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    (value,) = session.get_inputs()
    shape = list(value.shape)
    if value.type == "tensor(float)":
        return {value.name: rng.standard_normal(shape).astype(np.float32)}
    dtype = np.uint8 if value.type == "tensor(uint8)" else np.int8
    zp = 128 if dtype == np.uint8 else 0
    return {value.name: (rng.integers(-40, 40, shape) + zp).astype(dtype)}


def time_kernel(kernel: Kernel, threads: int = 1, rounds: int = 7, round_s: float = 0.015) -> KernelCost:
    """The fastest round's ms per call of ``kernel``'s float and int8 forms (noise from other processes only adds
    time, so the minimum is the robust estimate): up to ``rounds`` interleaved rounds (order alternating) of about
    ``round_s`` seconds each (at most 200 calls), after one warm-up call of each. It stops after two rounds (one in
    each order) when one form was 3x faster in both (``ConvInteger`` is often 10-100x slower), after three when every
    round of one form was at least 25 % faster than every round of the other."""
    rng = np.random.default_rng(0)
    runs = []
    for model in (float_model(kernel, rng), int8_model(kernel, rng)):
        session = _session(model, threads)
        feeds = _feed(session, rng)
        runs.append(lambda s=session, f=feeds: s.run(None, f))
    warmup = []
    for run in runs:  # the first call allocates and packs weights: it also sizes the rounds
        tick = time.perf_counter()
        run()
        warmup.append(time.perf_counter() - tick)
    calls = max(1, min(200, int(round_s / max(min(warmup), 1e-6))))
    times: list[list[float]] = [[], []]
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            tick = time.perf_counter()
            for _ in range(calls):
                runs[i]()
            times[i].append((time.perf_counter() - tick) * 1e3 / calls)
        if (r == 1 and _clear(times[0], times[1], 3.0)) or (r >= 2 and _clear(times[0], times[1], 1.25)):
            break
    return KernelCost(min(times[0]), min(times[1]))


def _clear(a: list[float], b: list[float], margin: float) -> bool:
    """Every round of one form at least ``margin`` times faster than every round of the other."""
    return max(a) * margin <= min(b) or max(b) * margin <= min(a)
