"""Exact, fast counting of float32 values into equal-width bins whose edges are float64.

The bins are ``[e[i], e[i + 1])`` with ``e = uniform_edges(start, width, bins)`` (``start + width * i``, in
float64); values below ``e[1]`` count in bin 0 and values at or above ``e[bins - 1]`` in the last bin.
``count_bins`` puts every value in exactly that bin, at about the cost of a few float32 passes:

1. In float32, ``t = x / width - start / width + D`` for chunks that stay in cache; ``u = trunc(clamp(t))``.
   ``D`` (``_margin``) exceeds the rounding error of ``t`` plus that of the float64 edges, so ``u`` is the
   exact bin or the one above it; when ``D`` would reach 1/4 (a range that is narrow next to its distance
   from 0, or a huge ``bins``) ``t`` is computed in float64 instead, where ``D`` is tiny.
2. ``x < g[u]`` (``g``: each edge rounded *up* to float32, ``g[0] = -inf``) says which. For a float32 ``x``
   and a float64 edge ``e``, ``x >= e`` exactly when ``x >= ceil32(e)`` (the least float32 ``>= e``), so this
   float32 comparison is the float64 one. It is taken from the sign bit of ``x - g[u]``: float subtraction
   keeps the sign of the exact difference (gradual underflow: a nonzero difference never rounds to 0), and
   for equal operands gives ``+0`` except ``(-0) - (+0) = -0``, so an edge at 0 is stored as ``-0``.

Proof that ``u`` is ``clamp(b)`` or ``clamp(b + 1)``, where ``b`` is the unclamped bin (``e[b] <= x <
e[b + 1]``). Let ``p`` be the precision (24 or 53), ``r = 2**-p * (1 + 2**-20)`` a bound on each relative
rounding (float64 then float32 included), ``A = max|x|``, ``M = |start|``, errors in bin widths. ``s = 1/w``
and ``c = -start/w + D`` are rounded once each, ``s * x`` and ``+ c`` once each (a fused multiply-add rounds
once: the bound holds too), so ``|t - ((x - start)/w + D)| <= r*(M/w + D) + (2r + r**2)*A/w + r*(1 + 2r)*(M/w
+ A/w + D) <= 4r*((M + A)/w + D)``. Each float64 edge ``fl(start + fl(w*i))`` is within ``eta = 2**-52 * (M/w +
2*bins)`` widths of ``start + w*i``, so ``b - eta <= (x - start)/w < b + 1 + eta``. With ``D < 1/4``,
``D = 2**(3-p) * ((M + A)/w + bins + 2) >= 4r*((M + A)/w + D) + eta``, hence ``b <= t < b + 1 + 2*D < b + 2``
and ``floor(t)`` is ``b`` or ``b + 1``; clamping ``t`` to ``[0, bins - 1]`` clamps it the same way. If ``u =
clamp(b + 1) != clamp(b)``, then ``u = b + 1 >= 1`` and ``x < e[u]``; if ``u = clamp(b)``, then ``u = 0``
(``g[0] = -inf``) or ``x >= e[b] >= e[u]``. Either way ``u - [x < g[u]] = clamp(b)``.

The chunk loop computes all this one place up (``t + 1`` clamped to ``[1, bins]``, the 1 folded into ``c``: its
rounding adds at most ``r`` to the error, inside the ``+ 2`` of ``D``), so index 0 is free for exact zeros. When
the histogram starts at 0 and no value is below it (``lo == start == 0``: ReLU outputs, often half zeros), bin 0's
entry in the table is the least positive float32 instead of ``-inf``: a zero has ``t = c < 2``, so index 1, and
``x < 2**-149`` moves exactly the zeros to index 0. The one ``bincount`` then counts them, instead of two more
passes over the chunk (``abs``, ``count_nonzero``).
"""

from __future__ import annotations

import functools

import torch

# elements per pass: the chunk and its three scratch buffers (2 MiB) stay in L2, and each op is big enough for torch
# to spread over its threads (2 idle threads: 7% faster than inline chunks below torch's 32768 grain on the bench
# models, both equal on 1 thread). A multiple of 16, so every chunk starts 64-byte aligned.
_CHUNK = 1 << 17
_PRECISION = {torch.float32: 24, torch.float64: 53}
_SEARCHED = 512  # tensors this small are counted by ``bucketize`` (see ``count_bins``)


def uniform_edges(start: float, width: float, bins: int) -> torch.Tensor:
    """The ``bins + 1`` float64 edges ``start + width * i`` (the one definition of the bins)."""
    return start + width * torch.arange(bins + 1, dtype=torch.float64)


def ceil_float32(values: torch.Tensor) -> torch.Tensor:
    """Each float64 value rounded up to float32: the least float32 that is ``>=`` it."""
    rounded = values.to(torch.float32)
    up = torch.nextafter(rounded, torch.tensor(float("inf")))
    return torch.where(rounded.to(torch.float64) < values, up, rounded)


def _margin(start: float, width: float, bins: int, amax: float, dtype: torch.dtype) -> float:
    """``D`` of the module docstring: the bin index computed in ``dtype`` is never below the exact one and
    less than one above it."""
    return 2.0 ** (3 - _PRECISION[dtype]) * ((abs(start) + amax) / width + bins + 2)


@functools.lru_cache(maxsize=256)  # a histogram's bins change only when it widens: reuse the table until then
def _lower_edges(start: float, width: float, bins: int, zeros_apart: bool) -> torch.Tensor:
    """``g`` of the module docstring one place up: entry ``i + 1`` is bin ``i``'s lower edge rounded up to float32,
    entry 1 is ``-inf``, or the least positive float32 with ``zeros_apart`` (then ``start`` is 0 and exact zeros
    get index 0); entry 0 is unused (shared: read only)."""
    lower = ceil_float32(uniform_edges(start, width, bins)[:-1])
    lower[0] = torch.finfo(torch.float32).smallest_normal * 2.0**-23 if zeros_apart else float("-inf")
    lower[lower == 0.0] = -0.0  # -0.0 - (+0.0) is -0.0, whose sign bit would say -0.0 < +0.0
    return torch.cat([lower.new_full((1,), float("-inf")), lower])


@torch.inference_mode()  # the chunk loop is dispatch-bound: skip autograd's bookkeeping
def count_bins(x: torch.Tensor, start: float, width: float, bins: int, lo: float,
               hi: float) -> tuple[torch.Tensor, int]:
    """Counts of ``x`` (finite float32, values in ``[lo, hi]``) in the ``bins`` bins of ``uniform_edges(start, width,
    bins)`` (int64; every value in the bin that holds it, values beyond the ends in the end bins) and the number
    of exact zeros (``+0`` or ``-0``). Example: ``count_bins(torch.tensor([0.5, 1.5]), 0.0, 1.0, 2, 0.5, 1.5)``
    is ``(tensor([1, 1]), 0)``."""
    if x.dtype != torch.float32:
        raise TypeError(f"count_bins counts float32 values (the observers' data), got {x.dtype}")
    flat = x.reshape(-1)
    amax, zeros_possible = max(-lo, hi), lo <= 0.0 <= hi
    zeros_apart = lo == 0.0 and start == 0.0  # no value below bin 0, whose lower edge is 0: zeros at index 0
    lower = _lower_edges(start, width, bins, zeros_apart).to(flat.device)
    # one binary search per value: exact (the same comparisons), and cheaper than the chunk loop's fixed cost on
    # a few values (10 vs 70 us on 16, equal near 1k); a float64 index only where float32 cannot carry the margin
    if flat.numel() <= _SEARCHED or _margin(start, width, bins, amax, torch.float64) >= 0.25:
        index = torch.bucketize(flat, lower[2:], right=True)
        return torch.bincount(index, minlength=bins), flat.numel() - int(torch.count_nonzero(flat))
    dtype = torch.float32 if _margin(start, width, bins, amax, torch.float32) < 0.25 else torch.float64
    shift = torch.tensor(1.0 - start / width + _margin(start, width, bins, amax, dtype), dtype=dtype,
                         device=flat.device)
    scale = 1.0 / width
    size = min(flat.numel(), _CHUNK)
    buffers = tuple(torch.empty(size, dtype=d, device=flat.device) for d in (dtype, torch.float32, torch.int32))
    counts = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)  # one place up: index i + 1 is bin i
    nonzero, count_nonzero = 0, zeros_possible and not zeros_apart
    for chunk in flat.split(_CHUNK):
        t, g, u = buffers if chunk.numel() == size else (b[:chunk.numel()] for b in buffers)
        g_bits = g.view(torch.int32)
        torch.add(shift, chunk if dtype == torch.float32 else chunk.to(dtype), alpha=scale, out=t)
        u.copy_(t.clamp_(1, bins))  # truncation: the floor, as t >= 1
        torch.index_select(lower, 0, u, out=g)
        torch.sub(chunk, g, out=g)
        torch.bitwise_right_shift(g_bits, 31, out=g_bits)  # -1 where x < lower[u], else 0
        counts += torch.bincount(u.add_(g_bits), minlength=bins + 1)
        if count_nonzero:
            torch.abs(chunk, out=g)  # -0 has a sign bit
            nonzero += int(torch.count_nonzero(g_bits))
    if zeros_apart:  # index 0 holds the zeros of bin 0
        zeros = int(counts[0])
        counts[1] += zeros
        return counts[1:], zeros
    return counts[1:], (flat.numel() - nonzero) if zeros_possible else 0
