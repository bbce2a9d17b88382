"""The export's self-check: the converted file, run in LiteRT on the example inputs, must compute what mixq's
PyTorch simulation computes, or it never replaces anything.

Inputs are fed through the file's signature by name (``args_0``, ... for positional inputs, the keys of dict
example inputs) and outputs are compared by name (``output_0``, ... or the keys of a dict / ``ModelOutput``).

The measure is the relative RMS disagreement ``||file - simulation|| / ||simulation||`` of each output. Its bound,
``TOLERANCE``, is one step of an 8-bit grid spanning the output: a tensor's range is about four times its RMS, so
one step of 255 over that range is ``4 / 255`` (1.6%) of the RMS.

* float32 / float16 files compute in float32 on the very weights the simulation uses (float16 weights upcast once,
  on both sides), so they agree to float32 rounding (~1e-6); 1.6% is a bound, not an expected error.
* Full-integer files run mixq's own scales and zero points; the two sides round the same values, differing in a
  tie or a requantization rounding by at most a step or two on a few elements, far below one step RMS.
* Dynamic-range files (and a full-integer file's hybrid layers: static Linears whose output mixq keeps float)
  quantize each layer's activation at run time on LiteRT's own grid (XNNPACK: one scale per
  row), which mixq simulates only for a model quantized for LiteRT (``runtime='litert'``: the hybrid layers'
  ``QuantizedLinear.rows``); otherwise it simulates ONNX Runtime's one scale per tensor. Two roundings of
  different grids cannot be compared step for step, so both are compared with ``float_activations``: mixq's
  int8 weights with activations left float. The file may be off that reference by as much as mixq's simulation
  is, plus ``TOLERANCE``: a per-row grid is never coarser than a per-tensor one. (On real all-MiniLM-L6-v2, whose
  hidden states have outlier channels, the file's ``last_hidden_state`` was 8% RMS off that reference and 26% off
  the per-tensor simulation, while its mean-pooled embeddings kept 0.998 cosine with fp32 and the simulation's
  0.993: a file-vs-simulation bound in steps would refuse a good file.) Even where the simulation rounds per
  row as the file does, a per-row grid spanning an outlier channel is coarse, so a value a fraction of a step
  apart upstream (an int8 layer's requantization) can round a step apart in it: real MiniLM's one-layer
  ``last_hidden_state`` was 2.6% RMS off such a simulation; those files are compared the same way.

* Weight-only decoders (``decoder.check_decoder``) round every integer-weight layer's input row to int8 in the
  file, and mixq rounds the same rows in the same arithmetic (``mixq.quant.kernels.row_rounding``: an int4 layer
  fed the same rows matches XNNPACK on every element). Through a stack of layers that rounding is not continuous:
  the file's float operators differ from PyTorch's in the last bit (LiteRT's int8 embedding + RMSNorm differs from
  PyTorch's by 1 ulp on 48 of 96 rows), a last-bit change on a rounding tie moves a value one step, the next layer
  then rounds a different row, and after a layer or two the two sides round independently. Moving the activations of
  mixq's own row-rounded 2-layer decoder (hidden 1024) by 1e-7 relative moves its logits by 2.7-3.1% RMS, as far
  as the file is from it and further than ``TOLERANCE``. So a decoder file is compared as a dynamic-range file is:
  with mixq's weights at float activations, allowed the row-rounded model's own disagreement with that reference
  plus ``TOLERANCE`` (:func:`allowed`). A decoder quantized for LiteRT (``runtime="litert"``) computes what the file
  does itself, so the file is also compared with it, allowed what moving that model's row-rounded inputs in the
  last bit moves it (:func:`last_bit_moves`) plus ``TOLERANCE``: ~0 on a trained decoder, whose file was 2e-7 off,
  ~3% on a random one whose rows sit on ties (its file 2% off).

A file that is off by a wrong weight, a wrong scale or a dropped operation disagrees by tens of percent and is
refused. The check sees only the example inputs: an error they do not exercise passes it (a tiny random BERT's
QAT file ran GELU and TANH in int8 and still matched on its example, its logits a few steps from zero), so give
an example like real data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mixq.export.errors import ExportError

TOLERANCE = 4 / 255
LAST_BIT = 1e-7  # float32's last bit, relative (2**-23 = 1.2e-7)


def named_outputs(outs: Any) -> dict[str, np.ndarray]:
    """The simulation's outputs under the names litert-torch gives the file's outputs."""
    if isinstance(outs, Mapping):  # a dict or a Hugging Face ModelOutput: outputs named by key
        return {k: v.detach().float().numpy() for k, v in outs.items() if isinstance(v, torch.Tensor)}
    leaves = [outs] if isinstance(outs, torch.Tensor) else torch.utils._pytree.tree_leaves(outs)
    return {f"output_{k}": v.detach().float().numpy() for k, v in enumerate(leaves) if isinstance(v, torch.Tensor)}


def _feed(a: np.ndarray, d: dict) -> np.ndarray:
    dtype, (scale, zp) = np.dtype(d["dtype"]), d["quantization"]
    if dtype.kind in "iu" and scale and a.dtype.kind == "f":  # a float on the input's integer grid
        info = np.iinfo(dtype)
        return np.clip(np.rint(a / np.float32(scale)) + zp, info.min, info.max).astype(dtype)
    return a.astype(dtype, copy=False)


def _float(out: np.ndarray, d: dict) -> np.ndarray:
    scale, zp = d["quantization"]
    if np.dtype(d["dtype"]).kind in "iu" and scale:
        return (out.astype(np.float32) - zp) * np.float32(scale)
    return out.astype(np.float32)


def file_outputs(content: bytes, inputs: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Run ``content`` once in LiteRT (XNNPACK, one thread) through its signature, inputs given by name."""
    from mixq.export.tflite.interpreter import make_interpreter

    runner = make_interpreter(content=content, threads=1).get_signature_runner()
    details = runner.get_input_details()
    if set(details) != set(inputs):
        raise ExportError(f"the converted file takes inputs {sorted(details)}, not {sorted(inputs)}")
    outs = runner(**{name: _feed(inputs[name].detach().numpy(), d) for name, d in details.items()})
    out_details = runner.get_output_details()
    return {name: _float(np.asarray(v), out_details[name]) for name, v in outs.items()}


def disagreement(got: np.ndarray, want: np.ndarray) -> float:
    """Relative RMS disagreement ``||got - want|| / ||want||`` (absolute when ``want`` is all zeros)."""
    diff = float(np.linalg.norm(got.astype(np.float64) - want.astype(np.float64)))
    norm = float(np.linalg.norm(want.astype(np.float64)))
    return diff / norm if norm > 0 else diff


def allowed(rounded: np.ndarray, reference: np.ndarray) -> float:
    """The largest disagreement with ``reference`` (float activations) accepted from a file that rounds activations at
    run time: ``rounded``'s (mixq's model rounding them) own disagreement with it plus ``TOLERANCE``."""
    return TOLERANCE + disagreement(rounded, reference)


@contextlib.contextmanager
def last_bit_moves(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """Within the block, the input of every layer of ``model`` that rounds it per row (quantized for LiteRT,
    ``float_output_linears``) first moves by up to ``LAST_BIT`` relative, at random (seeded): how far the model's
    outputs move then is how far last-bit differences of a runtime's float operators can move them through rounding
    ties, which a file that rounds the same rows may be off it by."""
    from mixq.quant.modules.rows import float_output_linears

    gen = torch.Generator().manual_seed(seed)

    def moved(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * (1 + LAST_BIT * (2 * torch.rand(x.shape, generator=gen) - 1)), *args[1:])

    hooks = [model.get_submodule(name).register_forward_pre_hook(moved)
             for name, rows in float_output_linears(model).items() if rows]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _rounds_at_run_time(m: nn.Module) -> bool:
    """Layers whose LiteRT kernel quantizes its input at run time on its own grid: dynamic-range layers, and static
    Linears with a float output (LiteRT's hybrid kernel, ``lowering.HybridLinear``)."""
    from mixq.quant.modules import DynamicQuantizedConv, DynamicQuantizedLinear, QuantizedLinear

    return isinstance(m, (DynamicQuantizedLinear, DynamicQuantizedConv)) or (
        isinstance(m, QuantizedLinear) and m.y_scale is None)


def rounds_at_run_time(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is compared through ``float_activations``."""
    return any(_rounds_at_run_time(m) for m in model.modules())


@contextlib.contextmanager
def float_activations(model: nn.Module) -> Iterator[None]:
    """Within the block, the layers LiteRT quantizes at run time (``_rounds_at_run_time``) compute with their int8
    weights (dequantized) on float activations: the reference both the file and mixq's simulation round from."""

    def linear(m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        x = inp[0] if getattr(m, "x_smooth", None) is None else inp[0] * m.x_smooth
        y = F.linear(x, (m.weight_t.float() * m.w_scale.reshape(1, -1)).t(), m.bias)
        return torch.relu(y) if getattr(m, "relu", False) else y

    def conv(m: nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
        w = m.qweight.float() * m.w_scale.reshape(-1, *[1] * (m.qweight.dim() - 1))
        return m.geometry.apply(inp[0], w, m.bias)

    hooks = [m.register_forward_hook(linear if hasattr(m, "weight_t") else conv)
             for m in model.modules() if _rounds_at_run_time(m)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def check_file(content: bytes, inputs: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray],
               mode: str, reference: Mapping[str, np.ndarray] | None = None) -> float:
    """Refuse (``ExportError``) a file that does not run, gives non-finite outputs, or disagrees with the
    simulation's ``expected`` outputs beyond ``TOLERANCE``; return the largest disagreement.

    With ``reference`` (dynamic-range: the ``float_activations`` outputs) the file is compared with it instead,
    allowed the simulation's own disagreement with it plus ``TOLERANCE``."""
    got = file_outputs(content, inputs)
    if set(got) != set(expected):
        raise ExportError(f"the converted file returns {sorted(got)}, the model {sorted(expected)}; nothing was "
                          "written")
    if not all(np.isfinite(v).all() for v in got.values()):
        raise ExportError("the converted file produced non-finite outputs on the example inputs; nothing was written")
    shapes = {name: (got[name].shape, want.shape) for name, want in expected.items() if got[name].size != want.size}
    if shapes:
        name, (file_shape, model_shape) = next(iter(shapes.items()))
        raise ExportError(f"the converted file's output {name!r} has shape {file_shape}, the model's {model_shape}; "
                          "nothing was written")
    worst = {name: disagreement(got[name], want.reshape(got[name].shape)) for name, want in expected.items()}
    bound = dict.fromkeys(worst, TOLERANCE)
    if reference is not None:
        worst = {name: disagreement(got[name], ref.reshape(got[name].shape)) for name, ref in reference.items()}
        bound = {name: allowed(expected[name], ref) for name, ref in reference.items()}
    name = max(worst, key=lambda k: worst[k] - bound[k])
    if worst[name] > bound[name]:
        against = "mixq's simulation" if reference is None else "mixq's weights at float activations"
        raise ExportError(f"the converted {mode.replace('_', '-')} file disagrees with {against} on the example "
                          f"inputs (output {name!r}: {worst[name]:.1%} relative RMS error, tolerance "
                          f"{bound[name]:.1%}); nothing was written")
    return max(worst.values())
