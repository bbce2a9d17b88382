"""fp32 master weights for 16-bit models (the Apex O2 recipe).

The model's parameters (and therefore its gradients) are stored in 16-bit; each optimizer is re-pointed at an
fp32 master copy. Before the optimizer step the 16-bit gradients are copied into the masters' ``.grad``;
after it the 16-bit parameters are refreshed from the masters. Parameters of float32-override modules stay
float32 and are optimised directly. Both copies are one fused ``torch._foreach_copy_`` each.

The model then computes with 16-bit weights: autocast has nothing left to cast per call (a Linear's weight is
already bf16), which is where bf16 GEMMs are fastest (oneDNN/AMX on CPU, tensor cores on GPU).

DDP builds its gradient buckets in the parameters' dtype when it wraps the model, so under DDP the parameters
must be 16-bit *before* wrapping: :func:`cast_params` does that (same ``keep_fp32`` as ``MixedPrecision``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["MasterWeights", "cast_params", "low_precision_mismatch"]


def _fp32_ids(keep_fp32_modules: Iterable[nn.Module]) -> set[int]:
    return {id(p) for m in keep_fp32_modules for p in m.parameters()}


@torch.no_grad()
def cast_params(model: nn.Module, dtype: torch.dtype, keep_fp32_modules: Iterable[nn.Module] = ()) -> nn.Module:
    """Store ``model``'s floating parameters in ``dtype``, except those of ``keep_fp32_modules``; in place.

    ``MixedPrecision(master_weights=True)`` does this itself; call it (through
    :meth:`mixq.MixedPrecision.cast_for_ddp`) only to cast a model before wrapping it in DDP. The fp32 masters are
    then made from the 16-bit values, as DeepSpeed's bf16 mode does.
    """
    fp32 = _fp32_ids(keep_fp32_modules)
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in fp32:
            p.data = p.data.to(dtype)
    return model


def low_precision_mismatch(model: nn.Module, dtype: torch.dtype,
                           keep_fp32_modules: Iterable[nn.Module] = ()) -> str | None:
    """Name of the first parameter not stored as :func:`cast_params` would store it, else ``None``."""
    fp32 = _fp32_ids(keep_fp32_modules)
    for name, p in model.named_parameters():
        want = torch.float32 if id(p) in fp32 else dtype
        if p.is_floating_point() and p.dtype != want:
            return f"{name} is {p.dtype}, expected {want}"
    return None


class MasterWeights:
    """Own the fp32 masters of ``model``'s parameters and keep the 16-bit copies in sync.

    Example:
        >>> model = nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mw = MasterWeights(model, [opt], torch.bfloat16)
        >>> model.weight.dtype, opt.param_groups[0]["params"][0].dtype
        (torch.bfloat16, torch.float32)
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        dtype: torch.dtype,
        keep_fp32_modules: Iterable[nn.Module] = (),
    ) -> None:
        fp32_ids = _fp32_ids(keep_fp32_modules)
        self.pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        to_master: dict[int, nn.Parameter] = {}
        for p in model.parameters():
            if id(p) in fp32_ids or not p.is_floating_point() or id(p) in to_master:
                continue
            master = nn.Parameter(p.detach().clone().float(), requires_grad=p.requires_grad)
            to_master[id(p)] = master
            self.pairs.append((p, master))
        for opt in optimizers:
            for group in opt.param_groups:
                group["params"] = [to_master.get(id(p), p) for p in group["params"]]
            for p, master in self.pairs:
                if p in opt.state:
                    opt.state[master] = opt.state.pop(p)
        self._master_of = {id(p): m for p, m in self.pairs}
        with torch.no_grad():
            for p, _ in self.pairs:
                p.data = p.data.to(dtype)  # a no-op for a model cast_params already cast (DDP)
                p.grad = None

    def grads_to_master(self) -> None:
        """Copy the 16-bit model gradients into the fp32 masters' ``.grad`` (one fused copy); free the 16-bit ones."""
        src, dst = [], []
        for p, master in self.pairs:
            if p.grad is None:
                master.grad = None
                continue
            if master.grad is None:
                master.grad = torch.empty_like(master)
            src.append(p.grad)
            dst.append(master.grad)
            p.grad = None
        if dst:
            torch._foreach_copy_(dst, src)

    def grad_of(self, param: nn.Parameter) -> torch.Tensor | None:
        """The gradient standing for ``param``: its master's after :meth:`grads_to_master`, else its own."""
        master = self._master_of.get(id(param))
        return param.grad if master is None or master.grad is None else master.grad

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Refresh the 16-bit model parameters from the updated masters (one fused, rounding copy)."""
        if self.pairs:
            torch._foreach_copy_([p for p, _ in self.pairs], [m for _, m in self.pairs])

    def zero_grad(self) -> None:
        """Drop the masters' gradients (the model's are zeroed by the caller)."""
        for _, master in self.pairs:
            master.grad = None

    def state_dict(self) -> list[torch.Tensor]:
        """The fp32 master values, in model parameter order (the 16-bit model state alone loses precision)."""
        return [master.detach().clone() for _, master in self.pairs]

    @torch.no_grad()
    def load_state_dict(self, masters: Sequence[torch.Tensor]) -> None:
        """Restore masters saved by :meth:`state_dict` and refresh the model from them."""
        if len(masters) != len(self.pairs):
            raise ValueError(
                f"state has {len(masters)} master weights but this model has {len(self.pairs)}; "
                "was it saved from a different model or keep_fp32 setting?"
            )
        for (_, master), saved in zip(self.pairs, masters, strict=True):
            if saved.shape != master.shape:
                raise ValueError(f"master weight shape {tuple(saved.shape)} != {tuple(master.shape)}")
            master.copy_(saved)
        self.master_to_model()
