"""Keep a quantize after a slice where mixq put it: a fence between the slice and the quantize.

LiteRT's converter treats slicing operators (SLICE, STRIDED_SLICE, GATHER, SPLIT, ...) as "same scale": it moves a
QUANTIZE that follows one up to the tensor being sliced, and every other reader of that tensor then reads it
through the moved QUANTIZE -> DEQUANTIZE. A BERT pooler reads the CLS token through a ``select``; its input grid,
calibrated on the CLS token alone, then rounded and clipped the whole last hidden state (a model output) as well:
the file was tens of percent off mixq's simulation. The quantization parameters belong to the tensor that was
calibrated, the slice's output, so a slice whose output is quantized gets two float negations after it (kept by
the converter as two MULs by -1 on the sliced, usually small, tensor): the QUANTIZE stays after them. The export's
self-check refuses the file if a converter release ever folds the fence away.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten
_SLICES = {aten.select.int, aten.slice.Tensor, aten.index.Tensor, aten.index_select.default, aten.narrow.default,
           aten.gather.default, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
           aten.unbind.int, aten.split_with_sizes_copy.default, aten.slice_copy.Tensor, aten.select_copy.int}
# ops that move values without changing them: the converter looks through these too
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
          aten.permute.default, aten.contiguous.default, aten.clone.default, aten.expand.default,
          aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints,
          aten.t.default, aten.alias.default, aten.dropout.default}
_GETITEM = "getitem"


def _quantizes(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.ops.quantized_decomposed.quantize_per_tensor.default


def _crosses_slice(node: object) -> bool:
    """Whether ``node``'s value reaches its reader through a slicing op (looking through views and getitem)."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        if node.target in _SLICES:
            return True
        if node.target not in _VIEWS and getattr(node.target, "__name__", "") != _GETITEM:
            return False
        node = node.args[0]
    return False


def fence_sliced_quantizes(gm: fx.GraphModule) -> int:
    """Insert ``neg(neg(x))`` before each activation quantize whose input comes through a slice; returns how many."""
    fenced = 0
    for node in list(gm.graph.nodes):
        if not _quantizes(node) or not _crosses_slice(node.args[0]):
            continue
        with gm.graph.inserting_before(node):
            first = gm.graph.call_function(aten.neg.default, (node.args[0],))
            second = gm.graph.call_function(aten.neg.default, (first,))
        for new in (first, second):
            if "val" in node.args[0].meta:
                new.meta["val"] = node.args[0].meta["val"]
        node.replace_input_with(node.args[0], second)
        fenced += 1
    if fenced:
        gm.recompile()
    return fenced
