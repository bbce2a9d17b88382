"""``FakeQuantizer``: an activation's observer plus its fake quantization, the unit QAT inserts around layers.

While observing (training mode, until frozen) it records each batch's range with its observer and adopts the
observer's ``(scale, zero_point)``; it always returns ``fake_quantize(x)``, so the network trains against the
rounding and clipping it will meet in deployment. With ``learnable=True`` the first batch initialises the scale,
which is then a parameter trained with LSQ (``mixq.quant.primitives.fake_quantize_lsq``); the zero point stays
fixed. It exposes the observer interface (``has_data``, ``calculate_qparams``) so conversion treats it as one.
"""

from __future__ import annotations

import torch
from torch import nn

from mixq.quant.observers import NoDataError, Observer
from mixq.quant.primitives import MIN_SCALE, fake_quantize, fake_quantize_lsq


class FakeQuantizer(nn.Module):
    """Observe (while enabled) and fake-quantize one activation tensor per ``observer.spec`` (per tensor)."""

    def __init__(self, observer: Observer, learnable: bool = False, freeze_after: int | None = None) -> None:
        super().__init__()
        self.observer = observer
        self.spec = observer.spec
        self.name = observer.name
        self.learnable = learnable
        self.freeze_after = freeze_after
        scale = torch.tensor(1.0)
        if learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", torch.tensor(0, dtype=self.spec.torch_dtype))
        self.register_buffer("observing", torch.tensor(True))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def has_data(self) -> bool:
        return bool(self.initialized)

    def seed(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Start from known parameters (a calibrated PTQ model) and stop observing."""
        with torch.no_grad():
            self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zero_point.reshape(()))
        self.initialized.fill_(True)
        self.observing.fill_(False)

    def freeze(self) -> None:
        """Stop updating the range; the current scale and zero point stay (and learnable scales keep training)."""
        self.observing.fill_(False)

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current ``(scale, zero_point)`` (detached; learned scales clamped positive)."""
        if not self.has_data:
            raise NoDataError(f"{self.name!r} has no quantization range yet: run training batches through the "
                              "model in train mode (model.train()) before evaluating or converting it")
        return self.scale.detach().clamp(min=MIN_SCALE).to(torch.float32).clone(), self.zero_point.clone()

    def _check_finite(self, x: torch.Tensor) -> None:
        if not torch.isfinite(x.detach()).all():
            raise ValueError(f"non-finite values (NaN or inf) reached {self.name!r} during quantization-aware "
                             "training; the batch or the float model's output is broken (observers were not "
                             "updated). Check the inputs and the learning rate")

    def _observe(self, x: torch.Tensor) -> None:
        try:
            self.observer(x)  # checks the batch is finite before recording anything
        except ValueError:
            self._check_finite(x)  # raises QAT's explanation when it was a non-finite batch
            raise
        if self.learnable and not self.initialized:  # the first batch sets where LSQ starts
            self._agree_across_ranks()
            lo, hi = self.observer.calculate_range()
            if bool((hi - lo) == 0):
                raise ValueError(f"learnable_scales: {self.name!r} saw only zeros in its first batch, so its scale "
                                 "would start at 0 and LSQ cannot learn from there; feed a representative first "
                                 "batch, or use learnable_scales=False")
        scale, zero_point = self.observer.calculate_qparams()
        with torch.no_grad():
            self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.initialized.fill_(True)
        seen = int(self.observer.num_batches)
        if self.learnable or (self.freeze_after is not None and seen >= self.freeze_after):
            self.observing.fill_(False)

    def _agree_across_ranks(self) -> None:
        """Under ``torch.distributed`` (DDP), widen the first batch's range to cover every rank's, so a learnable
        scale (a parameter, which DDP never re-broadcasts) starts equal on all ranks and stays equal."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.observer.min_val, op=dist.ReduceOp.MIN)
            dist.all_reduce(self.observer.max_val, op=dist.ReduceOp.MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return x
        if self.training:
            if bool(self.observing):
                self._observe(x)
            else:
                self._check_finite(x)
        if not self.has_data:
            self.calculate_qparams()  # raises with the explanation
        lo, hi = self.spec.qmin, self.spec.qmax
        if self.learnable:
            return fake_quantize_lsq(x, self.scale, self.zero_point, None, lo, hi)
        return fake_quantize(x, self.scale, self.zero_point, None, lo, hi)

    def extra_repr(self) -> str:
        state = "observing" if bool(self.observing) else "frozen"
        return f"{self.name!r}, {self.spec}, {state}, learnable={self.learnable}"
