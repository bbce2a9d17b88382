"""The group-wise weight grid that weight-only methods (RTN, GPTQ, AWQ) quantize onto and ``MatMulNBits`` runs.

A weight matrix ``[N, K]`` (out features x in features) is cut along K into groups of ``group_size`` columns; each
(row, group) has a float32 scale and an unsigned integer zero point. Codes are unsigned: ``w ~ (q - zero) * scale``.

* symmetric: ``scale = max|w| / (2**(bits-1) - 1)``, zero point ``2**(bits-1)`` (MatMulNBits' implicit default);
* asymmetric: the range ``[min(w, 0), max(w, 0)]`` spread over ``2**bits`` levels, zero point rounded into range.

ONNX Runtime's ``MatMulNBits`` runs 2-, 4- and 8-bit weights; 3-bit codes are stored in its 4-bit layout (3-bit
accuracy, 4-bit file). K is zero-padded to a whole number of groups, as MatMulNBits lays blocks out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RUNTIME_BITS = (2, 4, 8)  # what ONNX Runtime's MatMulNBits kernel runs
WEIGHT_ONLY_BITS = (2, 3, 4, 8)  # 3-bit codes ride in the 4-bit layout


def storage_bits(bits: int) -> int:
    """The MatMulNBits width that stores ``bits``-bit codes (3 -> 4)."""
    return 4 if bits == 3 else bits


@dataclass(frozen=True)
class Grid:
    """How a weight matrix is quantized: bits, group size along K, symmetric or with zero points."""

    bits: int
    group_size: int
    symmetric: bool = True

    @property
    def levels(self) -> int:
        return 2**self.bits

    @property
    def qmax(self) -> int:
        """The largest unsigned code."""
        return self.levels - 1

    def groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def padded(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` as float32 ``[N, groups, group_size]``, K zero-padded to whole groups."""
        n, k = weight.shape
        w = torch.zeros(n, self.groups(k) * self.group_size, dtype=torch.float32)
        w[:, :k] = weight.detach().to(torch.float32)
        return w.reshape(n, -1, self.group_size)

    def params_from_range(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point (float32, same shape as ``lo``/``hi``) covering ``[lo, hi]`` (which should hold 0)."""
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        if self.symmetric:
            half = 2 ** (self.bits - 1)
            scale = torch.maximum(-lo, hi) / (half - 1)
            zero = torch.full_like(scale, float(half))
        else:
            scale = (hi - lo) / self.qmax
            zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(0, self.qmax)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale.to(torch.float32), zero.to(torch.float32)

    def params(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Min-max scale and zero point per (row, group): float32 ``[N, groups]`` each."""
        w = self.padded(weight)
        return self.params_from_range(w.amin(dim=-1), w.amax(dim=-1))

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Unsigned codes of ``w`` (any shape broadcasting with ``scale``/``zero``): round half to even, saturate."""
        lo = 1 if self.symmetric and self.bits > 1 else 0  # symmetric grids are narrow: +-(2**(bits-1) - 1)
        return (torch.round(w / scale) + zero).clamp(lo, self.qmax)

    def fake_quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """``w`` rounded onto the grid and back to float (what the quantized layer multiplies by)."""
        return (self.codes(w, scale, zero) - zero) * scale

    def quantize_matrix(self, weight: torch.Tensor, scale: torch.Tensor | None = None,
                        zero: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned codes ``[N, groups, group_size]`` (uint8) of a whole matrix; min-max parameters by default."""
        if scale is None or zero is None:
            scale, zero = self.params(weight)
        return self.codes(self.padded(weight), scale.unsqueeze(-1), zero.unsqueeze(-1)).to(torch.uint8)

    def dequantize_matrix(self, weight: torch.Tensor, scale: torch.Tensor | None = None,
                          zero: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` after a round trip through the grid, ``[N, K]`` float32."""
        if scale is None or zero is None:
            scale, zero = self.params(weight)
        codes = self.quantize_matrix(weight, scale, zero).to(torch.float32)
        w = (codes - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
        return w.reshape(w.shape[0], -1)[:, : weight.shape[1]]


def _pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned ``bits``-bit values along the last dimension, lowest bits first (MatMulNBits' order)."""
    per_byte = 8 // bits
    pad = (-values.shape[-1]) % per_byte
    v = torch.nn.functional.pad(values.to(torch.int32), (0, pad)).reshape(*values.shape[:-1], -1, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits
    return (v << shifts).sum(dim=-1).to(torch.uint8)


def _unpack_rows(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The ``bits``-wide codes of each byte, lowest first. Division and remainder rather than shift and mask: the
    same integers, and ONNX can express them when a model reading a layer's ``weight`` traces this."""
    per_byte = 8 // bits
    divisors = 2 ** (torch.arange(per_byte, dtype=torch.int32) * bits)
    v = torch.remainder(torch.div(packed.to(torch.int32).unsqueeze(-1), divisors, rounding_mode="floor"), 2**bits)
    return v.reshape(*packed.shape[:-1], -1)[..., :count]


def pack_matmul_nbits(grid: Grid, codes: torch.Tensor, zero: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """MatMulNBits' ``B`` (uint8 ``[N, groups, bytes]``) and ``zero_points`` (uint8 ``[N * ceil(groups * bits /
    8)]``, None for symmetric grids, whose zero point is the kernel's default) plus the storage width in bits.

    Symmetric 3-bit codes move to the middle of the 4-bit range so the implicit zero point 8 still applies."""
    bits = storage_bits(grid.bits)
    if grid.symmetric:
        codes = codes.to(torch.int32) - 2 ** (grid.bits - 1) + 2 ** (bits - 1)
        return _pack_rows(codes, bits).contiguous(), None, bits
    zp = _pack_rows(zero.to(torch.int32), bits).reshape(-1).contiguous()
    return _pack_rows(codes, bits).contiguous(), zp, bits


def unpack_matmul_nbits(packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None, bits: int,
                        k: int) -> torch.Tensor:
    """Float ``[N, K]`` weights from MatMulNBits' ``B``, ``scales`` and optional ``zero_points`` (as the kernel
    dequantizes them)."""
    n, groups, nbytes = packed.shape
    q = _unpack_rows(packed, bits, nbytes * 8 // bits).to(torch.float32)
    if zero_points is None:
        zero = torch.full((n, groups, 1), float(2 ** (bits - 1)))
    else:
        zero = _unpack_rows(zero_points.reshape(n, -1), bits, groups).to(torch.float32).unsqueeze(-1)
    w = (q - zero) * scales.reshape(n, groups, 1)
    return w.reshape(n, -1)[:, :k]
