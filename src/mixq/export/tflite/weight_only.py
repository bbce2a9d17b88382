"""Weight-only layers in a ``.tflite`` file: mixq's integer codes stored as LiteRT integer FULLY_CONNECTED weights.

* 8-bit per-channel -> int8 per-channel weights (XNNPACK's qd8-f32-qc8w kernel);
* 4-bit (and 3-/2-bit, whose codes fit int4) per-channel -> int4 per-channel; group-wise with a group size of 32,
  64, 128 or 256 -> int4 blockwise (qd8-f32-qb4w).

What changes: LiteRT's integer-weight kernels quantize each activation row to int8 at run time (mixq's weight-only
simulation keeps activations float unless the model was quantized for LiteRT, ``runtime="litert"``: then it rounds
them as XNNPACK does, ``WeightOnlyLinear.rows``), and a blockwise scale is stored as bfloat16 (7-bit mantissa;
ai-edge-quantizer writes it as float16): :class:`WeightOnlyWeights` rounds mixq's group scales that way (a model
quantized for LiteRT holds them so already, ``LiteRTRuntime.stored_scales``), so the lowered model, the file and
its check use the same weights. Per-channel scales stay float32. The integer codes are mixq's, bit for
bit: ai-edge-quantizer writes the layout (a recipe per layer), then :func:`store_weight_only` overwrites its
codes and scales with mixq's (its min-max would re-derive a different scale for a GPTQ group whose codes do not
reach the grid's end).

Refused in one line (:func:`refusal`): asymmetric grids (LiteRT's integer weights have no zero point), 8-bit
groups, group sizes LiteRT has no blockwise kernel for, and K not a whole number of groups.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixq.quant.kernels import row_rounding
from mixq.quant.modules import WeightOnlyLinear
from mixq.quant.weight_only.grid import _unpack_rows

BLOCK_SIZES = (32, 64, 128, 256)  # ai-edge-quantizer's BLOCKWISE_* granularities


def _per_channel(m: WeightOnlyLinear) -> bool:
    return m.block_size >= m.in_features


def refusal(m: WeightOnlyLinear) -> str | None:
    """Why LiteRT cannot hold this weight-only layer's numbers (None when it can)."""
    if not m.symmetric:
        return "has zero points (asymmetric grid), which LiteRT's integer weights cannot hold; quantize symmetric"
    if m.code_bits == 8 and not _per_channel(m):
        return "has 8-bit groups, which LiteRT has no kernel for; use 8-bit per-channel or 4-bit groups"
    if not _per_channel(m) and m.block_size not in BLOCK_SIZES:
        return (f"has group size {m.block_size}, which LiteRT's blockwise int4 does not take; use group_size in "
                f"{BLOCK_SIZES}")
    if not _per_channel(m) and m.in_features % m.block_size:
        return f"has {m.in_features} inputs, not a whole number of {m.block_size}-column groups"
    return None


def refuse_weight_only(model: nn.Module) -> None:
    """ExportError naming the first weight-only layer LiteRT cannot hold (see :func:`refusal`)."""
    from mixq.export.errors import ExportError

    for name, module in model.named_modules():
        if isinstance(module, WeightOnlyLinear) and refusal(module) is not None:
            raise ExportError(f"layer {name!r} {refusal(module)}")


def file_scale(scale: torch.Tensor) -> torch.Tensor:
    """A blockwise scale as the file stores it: bfloat16 mantissa, written as float16 (ai-edge-quantizer's)."""
    return scale.to(torch.bfloat16).to(torch.float16).to(torch.float32)


class WeightOnlyWeights(nn.Module):
    """A weight-only layer for LiteRT: a float Linear holding ``codes * scale`` (found in the converted file by
    those values, then stored as the integer ``codes`` and ``scale``)."""

    def __init__(self, m: WeightOnlyLinear) -> None:
        super().__init__()
        why = refusal(m)
        if why is not None:
            raise ValueError(f"this weight-only layer {why}")
        n, k, storage = m.out_features, m.in_features, m.bits
        groups = m.scales.numel() // n
        codes = _unpack_rows(m.packed, storage, m.packed.shape[-1] * 8 // storage).reshape(n, -1)[:, :k]
        self.bits = 8 if m.code_bits == 8 else 4
        self.block = 0 if _per_channel(m) else m.block_size
        scale = m.scales.reshape(n, groups).to(torch.float32)
        scale = scale if self.block == 0 else file_scale(scale)
        self.register_buffer("codes", (codes.to(torch.int32) - 2 ** (storage - 1)).to(torch.int8))
        self.register_buffer("scale", scale.contiguous())
        per_column = scale.repeat_interleave(self.block or k, dim=1)[:, :k]
        self.register_buffer("weight", self.codes.to(torch.float32) * per_column)
        self.register_buffer("bias", None if m.bias is None else m.bias.detach().to(torch.float32).clone())
        if bool((self.scale == 0).any()):
            raise ValueError("a group scale underflows float16 in the file; this layer cannot be stored")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"int{self.bits}, {'per-channel' if self.block == 0 else f'blocks of {self.block}'}"


@contextlib.contextmanager
def row_quantized_activations(model: nn.Module) -> Iterator[None]:
    """Within the block, every weight-only layer of ``model`` (mixq's, or lowered) first rounds its input to int8
    per row the way XNNPACK's integer-weight kernels do (``mixq.quant.kernels.row_rounding``; a layer quantized for
    LiteRT already does). With the lowered model (blockwise scales rounded as the file stores them) this is what
    the file computes, to float32 rounding."""

    def rounded(module: nn.Module, args: tuple) -> tuple:
        return (row_rounding(args[0]), *args[1:])

    kinds = (WeightOnlyLinear, WeightOnlyWeights)
    hooks = [m.register_forward_pre_hook(rounded) for m in model.modules()
             if isinstance(m, kinds) and not getattr(m, "rows", False)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _digest(data: bytes | np.ndarray) -> str:
    return hashlib.sha1(bytes(data)).hexdigest()


def _recipe(layers: list[tuple[str, WeightOnlyWeights]]) -> list:
    from ai_edge_quantizer import qtyping, recipe_manager

    manager = recipe_manager.RecipeManager()
    for scope, layer in layers:
        granularity = (qtyping.QuantGranularity.CHANNELWISE if layer.block == 0
                       else qtyping.QuantGranularity[f"BLOCKWISE_{layer.block}"])
        manager.add_dynamic_config(regex="^" + re.escape(scope) + "$",
                                   operation_name=qtyping.TFLOperationName.FULLY_CONNECTED, num_bits=layer.bits,
                                   granularity=granularity)
    return manager.get_quantization_recipe()


def _weight_tensors(model: object, layers: list[WeightOnlyWeights]) -> dict[tuple[int, int], int]:
    """``{(subgraph, tensor index): layer index}`` for every FULLY_CONNECTED weight holding a layer's values."""
    from ai_edge_litert import schema_py_generated as schema

    wanted = {_digest(m.weight.numpy().tobytes()): k for k, m in enumerate(layers)}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    found: dict[tuple[int, int], int] = {}
    for g, graph in enumerate(model.subgraphs):
        for op in graph.operators:
            if codes[op.opcodeIndex] != schema.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2:
                continue
            tensor = graph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data if 0 < tensor.buffer < len(model.buffers) else None
            if data is not None and len(data) and _digest(data) in wanted:
                found[(g, op.inputs[1])] = wanted[_digest(data)]
    return found


def store_weight_only(float_model: bytes, layers: list[WeightOnlyWeights]) -> bytes:
    """``float_model`` with the FULLY_CONNECTED weights holding ``layers``' values stored as their integer codes
    and scales (every subgraph: a prefill/decode file has two); a layer not found is refused."""
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    from mixq.export.tflite.flatbuffer import read_flatbuffer, write_flatbuffer

    model = read_flatbuffer(float_model)
    where = _weight_tensors(model, layers)
    missing = len(layers) - len(set(where.values()))
    if missing:
        raise RuntimeError(f"found the weights of {len(layers) - missing} of the {len(layers)} weight-only layers in "
                           "the converted file (litert-torch changed their values); nothing was written")
    scopes = {}
    for g, graph in enumerate(model.subgraphs):
        for op in graph.operators:
            if len(op.inputs) > 1 and (g, op.inputs[1]) in where:
                scopes[tfl_flatbuffer_utils.get_op_scope(op, graph.tensors)] = layers[where[(g, op.inputs[1])]]
    qt = quantizer.Quantizer(float_model)
    qt.load_quantization_recipe(_recipe(list(scopes.items())))
    quantized = read_flatbuffer(qt.quantize().quantized_model)  # constants past 256 KiB come after the flatbuffer
    for (g, index), k in where.items():
        _overwrite(quantized, quantized.subgraphs[g], index, layers[k])
    return write_flatbuffer(quantized)


def _overwrite(model: object, graph: object, index: int, layer: WeightOnlyWeights) -> None:
    """Put ``layer``'s codes and scales into the quantized weight tensor ``index`` (laid out by the recipe)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.transformations import transformation_utils

    tensor = graph.tensors[index]
    expected = schema.TensorType.INT8 if layer.bits == 8 else schema.TensorType.INT4
    if tensor.type != expected or tensor.quantization is None:
        raise RuntimeError(f"ai-edge-quantizer did not store weight {tensor.name!r} as int{layer.bits}")
    codes = layer.codes.numpy()
    model.buffers[tensor.buffer].data = transformation_utils.pack_data(layer.bits, codes.view(np.uint8)) \
        if layer.bits == 4 else codes.reshape(-1).view(np.uint8).copy()
    q = tensor.quantization
    if layer.block == 0:
        q.scale = layer.scale.reshape(-1).tolist()
        q.zeroPoint = [0] * layer.scale.numel()
        return
    scales = graph.tensors[q.details.scales]
    model.buffers[scales.buffer].data = layer.scale.to(torch.float16).numpy().reshape(-1).view(np.uint8).copy()
