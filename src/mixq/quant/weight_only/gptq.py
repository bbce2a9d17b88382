"""GPTQ (Frantar et al., 2023): quantize a weight matrix column by column, spreading each column's rounding error
over the columns not yet quantized through the inverse Hessian of the layer's calibration inputs.

Works on a plain ``[out_features, in_features]`` matrix; ``mixq.quant.weight_only.calibrate`` feeds it. Groups are
the exported MatMulNBits blocks: without ``act_order`` a group's scale is taken from the (error-updated) weights
when the sweep reaches it; with ``act_order`` columns go in order of decreasing Hessian diagonal and every group's
scale is fixed up front from the original weights, so the order never splits a block.
"""

from __future__ import annotations

import math

import torch

from mixq.quant.weight_only.grid import Grid


class HessianAccumulator:
    """Running ``H = 2/n * sum(x x^T)`` over every row of a layer's inputs (float64 sums, float32 result)."""

    def __init__(self, in_features: int) -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.hessian.shape[0]).to(torch.float64)
        self.hessian += x.T @ x
        self.rows += x.shape[0]

    def result(self) -> torch.Tensor:
        if self.rows == 0:
            raise ValueError("no calibration inputs reached this layer")
        return (self.hessian * (2.0 / self.rows)).to(torch.float32)


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; more damping if H is not positive definite."""
    eye = torch.eye(hessian.shape[0], dtype=torch.float64)
    h = hessian.to(torch.float64)
    level = damp * float(h.diagonal().mean())
    for _ in range(6):
        factor, info = torch.linalg.cholesky_ex(h + level * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
        level *= 10.0
    raise ValueError("the calibration Hessian is not positive definite even with heavy damping; use more "
                     "calibration data or method='rtn'")


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, grid: Grid, *, damp: float = 0.01,
                  act_order: bool = False, lazy_columns: int = 128
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of ``weight`` ``[N, K]`` given its input Hessian ``[K, K]``.

    Returns the quantized weights in float (``[N, K]``, every value on the grid) and the per-group scale and zero
    point (float32 ``[N, groups]``). With an identity Hessian no error is propagated and the result is RTN's.
    """
    n, k = weight.shape
    gs = grid.group_size
    kp = grid.groups(k) * gs
    w = torch.zeros(n, kp, dtype=torch.float32)
    w[:, :k] = weight.detach().to(torch.float32)
    h = torch.zeros(kp, kp, dtype=torch.float32)
    h[:k, :k] = hessian.to(torch.float32)
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scale = torch.zeros(n, kp // gs)
    zero = torch.zeros(n, kp // gs)
    perm = torch.arange(kp)
    if act_order:
        scale, zero = grid.params(w)  # fixed up front: the column order must not split a block's range
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    h_inv = _inverse_cholesky(h, damp)
    q_all = torch.zeros_like(w)
    step = max(gs, math.ceil(lazy_columns / gs) * gs)
    for i1 in range(0, kp, step):
        i2 = min(i1 + step, kp)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = h_inv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            g = col // gs
            if not act_order and (i1 + i) % gs == 0:
                block = w1[:, i:i + gs]
                scale[:, g], zero[:, g] = grid.params_from_range(block.amin(dim=1), block.amax(dim=1))
            q = grid.fake_quantize(w1[:, i], scale[:, g], zero[:, g])
            q1[:, i] = q
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        q_all[:, i1:i2] = q1
        w[:, i2:] -= err1 @ h_inv[i1:i2, i2:]
    if act_order:
        q_all = q_all[:, torch.argsort(perm)]
    return q_all[:, :k], scale, zero
