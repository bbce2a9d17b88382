"""``MixedPrecision``: autocast, loss scaling and bookkeeping for a user's own training loop."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mixq.amp import distributed as dist_utils
from mixq.amp.checkpoint import STATE_VERSION, parse_state
from mixq.amp.diagnostics import NumericsConfig, NumericsRecorder, NumericsReport
from mixq.amp.errors import LossScaleCollapseError, NonFiniteGradientsError, StepOrderError
from mixq.amp.loss_scale import LossScale, found_inf, make_grad_scaler, set_found_inf
from mixq.amp.master_weights import MasterWeights, cast_params, low_precision_mismatch
from mixq.amp.nonfinite import first_nonfinite_layer, nonfinite_flag
from mixq.amp.norms import split_native
from mixq.amp.overrides import Fp32Overrides, OutputCast, match_keep_fp32
from mixq.amp.policy import Policy, PolicyChoice, resolve_policy
from mixq.amp.stats import AmpStats

__all__ = ["MixedPrecision"]

logger = logging.getLogger(__name__)


def _check_optimizers(model: nn.Module, optimizer: Any) -> list[torch.optim.Optimizer]:
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if not optimizers:
        raise ValueError("at least one optimizer is required")
    owned = {id(p) for p in model.parameters()}
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer {i} is a {type(opt).__name__}, not a torch.optim.Optimizer")
        foreign = [tuple(p.shape) for g in opt.param_groups for p in g["params"] if id(p) not in owned]
        if foreign:
            raise ValueError(
                f"optimizer {i} holds {len(foreign)} parameter(s) that are not in the model (shapes "
                f"{foreign[:3]}); build the optimizer from model.parameters() of the same model instance"
            )
    return optimizers


class MixedPrecision:
    """Autocast + ``torch.amp.GradScaler`` + policy, bookkeeping and diagnostics for a training loop.

    Args:
        model: the model being trained (may be wrapped in DDP or sharded with ``fully_shard``).
        optimizer: one optimizer or a list; all their parameters must belong to ``model``.
        precision: ``"fp16"``, ``"bf16"``, ``"fp32"``, ``"auto"``, a spec like ``"p=f32,c=bf16,o=f32"`` or a
            :class:`Policy`. ``mp.choice.reason`` says why ``"auto"`` chose what it did.
        keep_fp32: module name patterns and/or types run in float32 inside autocast. Losses always do, and so
            do norms, except a BatchNorm/GroupNorm whose kernel is checked to accumulate in float32 on this device
            (``mp.native_norms`` lists those, with why): it runs on 16-bit inputs with fp32 parameters and
            statistics, its result the fp32 one rounded once, without two casts per layer (``mixq.amp.norms``).
        master_weights: the bf16-weights mode (Apex O2 / DeepSpeed bf16; also ``precision="p=bf16,c=bf16,o=f32"``):
            the model's parameters are stored in the 16-bit compute dtype, so the forward computes with 16-bit
            weights and autocast casts none of them per call; the optimizers update fp32 master copies (their
            state is fp32 too); norms and ``keep_fp32`` modules keep fp32 parameters. ``state_dict()`` carries
            the masters for an exact resume. Under DDP, cast the model with :meth:`cast_for_ddp` before wrapping;
            under FSDP2 use ``fully_shard(mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16))`` instead.
        loss_scale: ``"dynamic"``, a number (static scale), ``"none"`` or a :class:`LossScale`; fp16 only.
        max_grad_norm: clip the global norm of the unscaled gradients to this value.
        accumulation_steps: micro-batches per optimizer step; the loss is divided by it.
        diagnostics: ``True`` or a :class:`NumericsConfig` to sample numerics (see :meth:`numerics_report`).
        max_consecutive_skips: a step whose gradients hold an inf/NaN is never applied, in any precision (weights
            and optimizer state stay bit-identical; ``stats`` counts it); after this many skipped steps in a row
            ``step()`` raises :class:`~mixq.amp.errors.NonFiniteGradientsError` naming the first layer with
            non-finite gradients. Default 25: dynamic fp16 scaling recovers from 2**16 within 17 skips; ``None``
            never raises.
        device: device type for autocast; defaults to that of the model's first parameter.

    Example:
        >>> model = nn.Linear(8, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> mp = MixedPrecision(model, opt, precision="bf16")
        >>> with mp.autocast():
        ...     loss = model(torch.randn(4, 8)).float().pow(2).mean()
        >>> mp.backward(loss); mp.step(); mp.zero_grad()
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
        precision: str | Policy = "auto",
        *,
        keep_fp32: Sequence[str | type[nn.Module]] = (),
        master_weights: bool = False,
        loss_scale: str | float | LossScale = "dynamic",
        max_grad_norm: float | None = None,
        accumulation_steps: int = 1,
        diagnostics: bool | NumericsConfig = False,
        device: str | torch.device | None = None,
        history_size: int = 10_000,
        max_consecutive_skips: int | None = 25,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model, self.optimizers = model, _check_optimizers(model, optimizer)
        if not (isinstance(accumulation_steps, int) and accumulation_steps >= 1):
            raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps!r}")
        if max_grad_norm is not None and not (isinstance(max_grad_norm, (int, float)) and math.isfinite(max_grad_norm)
                                              and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive finite number or None, got {max_grad_norm!r}")
        if max_consecutive_skips is not None and not (isinstance(max_consecutive_skips, int)
                                                      and max_consecutive_skips >= 1):
            raise ValueError(f"max_consecutive_skips must be an int >= 1 or None, got {max_consecutive_skips!r}")
        self.max_consecutive_skips = max_consecutive_skips
        first = next(model.parameters(), None)
        self.device_type = (
            torch.device(device).type if device is not None else (first.device.type if first is not None else "cpu")
        )  # noqa: E501
        self.choice: PolicyChoice = resolve_policy(precision, self.device_type)
        policy = self.choice.policy
        if master_weights or policy.master_weights:
            if not policy.is_mixed:
                raise ValueError("master_weights=True needs a 16-bit precision ('fp16' or 'bf16'), not fp32")
            if dist_utils.is_fsdp(model):
                raise ValueError(
                    "master_weights is not supported on FSDP-sharded models: FSDP2 does the same natively, use "
                    "fully_shard(mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16)) and precision='bf16'"
                )
            policy = policy.with_master_weights()
        self.policy = policy
        logger.info("mixq.amp: policy %s on %s (%s)", policy, self.device_type, self.choice.reason)
        self.loss_scale = LossScale.parse(loss_scale)
        if not policy.needs_loss_scaling and loss_scale != "dynamic":
            message = (f"loss_scale={loss_scale!r} has no effect: {policy} does not compute in fp16, so its "
                       "gradients are not scaled")
            if precision != "auto":  # asked for explicitly: refuse; "auto" may pick fp16 on another machine
                raise ValueError(f"{message}; drop loss_scale or use precision='fp16'")
            warnings.warn(f"{message} (precision='auto' chose {policy} here)", stacklevel=2)
        self.scaler = make_grad_scaler(self.loss_scale, self.device_type, policy.needs_loss_scaling)
        self.max_grad_norm, self.accumulation_steps = max_grad_norm, accumulation_steps
        self._inner = dist_utils.unwrap(model)
        matched = match_keep_fp32(self._inner, keep_fp32) if policy.is_mixed else {}
        self.keep_fp32, self.native_norms = split_native(self._inner, matched, keep_fp32, self.device_type,
                                                         policy.compute_dtype)
        self._overrides = Fp32Overrides(self._inner, self.keep_fp32, self.device_type).install()
        fp32_params = [self._inner.get_submodule(n) for n in matched]  # norms keep fp32 parameters either way
        if policy.master_weights and dist_utils.is_ddp(model):
            wrong = low_precision_mismatch(self._inner, policy.param_dtype, fp32_params)
            if wrong is not None:
                self._overrides.remove()
                raise ValueError(
                    f"master_weights under DDP needs the parameters cast before wrapping ({wrong}): DDP sizes its "
                    "gradient buckets when it wraps. Call MixedPrecision.cast_for_ddp(model, precision, keep_fp32) "
                    "on the bare model, then wrap it in DistributedDataParallel"
                )
        self._output_cast = None
        if policy.is_mixed:
            self._output_cast = OutputCast(model, policy.output_dtype, self.device_type)
        self.master: MasterWeights | None = None
        if policy.master_weights:
            self.master = MasterWeights(self._inner, self.optimizers, policy.param_dtype, fp32_params)
        self._params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        self._sync_inf = dist_utils.is_fsdp(model) and dist_utils.world_size() > 1
        config = NumericsConfig() if diagnostics is True else diagnostics or None
        self._numerics = NumericsRecorder(self._inner, config) if config else None
        initial = self.loss_scale.init_scale if self.scaler.is_enabled() else 1.0
        self.stats = AmpStats(scale=initial, history_size=history_size)
        self._micro = 0
        self._warned_loss_dtype = False

    @staticmethod
    def cast_for_ddp(model: nn.Module, precision: str | Policy = "bf16",
                     keep_fp32: Sequence[str | type[nn.Module]] = ()) -> nn.Module:
        """Store ``model``'s parameters in 16-bit (``keep_fp32`` modules and norms excepted) before DDP wraps it.

        Only needed for ``master_weights=True`` under DistributedDataParallel; pass the same ``precision`` and
        ``keep_fp32`` to ``MixedPrecision`` afterwards. Gradients are then all-reduced in 16-bit.

        Example:
            >>> m = MixedPrecision.cast_for_ddp(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "bf16")
            >>> m[0].weight.dtype, m[1].weight.dtype
            (torch.bfloat16, torch.float32)
        """
        policy = resolve_policy(precision, "cpu").policy if isinstance(precision, str) else precision
        if not policy.is_mixed:
            raise ValueError(f"cast_for_ddp needs a 16-bit precision ('fp16' or 'bf16'), got {policy}")
        names = match_keep_fp32(model, keep_fp32)
        return cast_params(model, policy.compute_dtype, [model.get_submodule(n) for n in names])

    # -- the training-loop API ------------------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Current loss scale (1.0 when loss scaling is off)."""
        return self.stats.scale

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Context for the forward pass (and the loss): autocast in the policy's compute dtype."""
        boundary = (self._micro + 1) % self.accumulation_steps == 0
        if self.accumulation_steps > 1 and self._sync_inf and hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(boundary)
        sampled = self._numerics is not None and self._numerics.wants(self.stats.steps)
        if sampled:
            self._numerics.start_forward()
        try:
            with (
                dist_utils.maybe_no_sync(self.model, not boundary),
                torch.autocast(self.device_type, dtype=self.policy.compute_dtype, enabled=self.policy.is_mixed),
            ):
                yield
        finally:
            if sampled:
                self._numerics.stop_forward()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Backpropagate ``loss`` (scaled for fp16, divided by ``accumulation_steps``)."""
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}; reduce it with .mean() or .sum()")
        if not loss.requires_grad:
            raise ValueError(
                "loss does not require grad: was it computed under torch.no_grad() or from detached tensors?"
            )  # noqa: E501
        if loss.dtype != torch.float32 and self.policy.is_mixed and not self._warned_loss_dtype:
            self._warned_loss_dtype = True
            warnings.warn(f"loss is {loss.dtype}; compute it in float32 (e.g. logits.float())", stacklevel=2)
        if self.accumulation_steps > 1:
            loss = loss / self.accumulation_steps
        self.scaler.scale(loss).backward(**kwargs)
        self._micro += 1

    def step(self) -> bool:
        """Unscale, check for inf/NaN, clip, step every optimizer (or skip all), update the scale.

        Returns True when the weights were updated; False for a skipped step or while accumulating.
        """
        if self._micro == 0:
            raise StepOrderError("step() was called without backward() since the last step; call mp.backward(loss)")
        if self._micro < self.accumulation_steps:
            return False
        self._micro = 0
        scaling = self.scaler.is_enabled()
        if self._numerics is not None and self._numerics.wants(self.stats.steps):
            live = self.stats.scale if scaling else 1.0
            self._numerics.record_grads(self.stats.steps, live, live if scaling else LossScale().init_scale)
        if self.master is not None:
            self.master.grads_to_master()
        if scaling:
            for opt in self.optimizers:
                self.scaler.unscale_(opt)
            inf = found_inf(self.scaler, self.optimizers)
        else:  # bf16, fp32 and unscaled fp16: the same verdict GradScaler gives, from the gradients themselves
            inf = nonfinite_flag(p.grad for p in self._params)
        if self._sync_inf:
            dist_utils.all_reduce_max_(inf)
        skipped = bool(inf.item() > 0)
        norm = None
        if self.max_grad_norm is not None and not skipped:
            total = torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
            norm = float(total.full_tensor() if hasattr(total, "full_tensor") else total)
            skipped = not math.isfinite(norm)  # finite gradients whose norm overflowed
        if skipped and scaling:
            set_found_inf(self.scaler, self.optimizers, 1.0)  # step()/update() act on the global verdict
        if not skipped:
            for opt in self.optimizers:
                self.scaler.step(opt)
            if self.master is not None:
                self.master.master_to_model()
        if scaling:
            self.scaler.update(self.loss_scale.init_scale if self.loss_scale.mode == "static" else None)
        scale = self.scaler.get_scale() if scaling else 1.0
        self.stats.record(scale, skipped, norm)
        if skipped:
            dynamic = scaling and self.loss_scale.mode == "dynamic"
            logger.log(logging.INFO if dynamic else logging.WARNING,
                       "mixq.amp: step %d skipped (inf/NaN gradients); scale now %g", self.stats.steps - 1, scale)
            self._check_floor(scale)
            self._check_consecutive_skips()
        return not skipped

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear model and optimizer gradients; a no-op between micro-batches of an accumulation."""
        if self._micro:
            return
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)
        if self.master is not None:
            self._inner.zero_grad(set_to_none=set_to_none)
            self.master.zero_grad()

    def _check_floor(self, scale: float) -> None:
        floor = self.loss_scale.min_scale
        if self.loss_scale.mode != "dynamic" or floor is None or scale >= floor:
            return
        bad = self._first_bad_layer()
        where = f"the first layer with non-finite gradients is '{bad}'" if bad else "no layer has non-finite grads now"
        raise LossScaleCollapseError(
            f"loss scale fell to {scale:g}, below min_scale={floor:g}, after "
            f"{self.stats.skipped_steps} skipped steps; {where}. Keep it in fp32 (keep_fp32=[...]), use bf16 "
            "or a lower learning rate.",
            scale=scale,
            first_bad_layer=bad,
        )

    def _first_bad_layer(self) -> str | None:
        grad_of = self.master.grad_of if self.master is not None else (lambda p: p.grad)
        return first_nonfinite_layer(self._inner, grad_of)

    def _check_consecutive_skips(self) -> None:
        limit, skipped = self.max_consecutive_skips, self.stats.consecutive_skips
        if limit is None or skipped < limit:
            return
        bad = self._first_bad_layer()
        where = (f"the first layer with non-finite gradients is '{bad}'" if bad else
                 "the gradients were finite but their norm overflowed")
        raise NonFiniteGradientsError(
            f"{skipped} optimizer steps in a row were skipped because their gradients were not finite; {where}. "
            "Check the data and the loss for inf/NaN, lower the learning rate, or keep that layer in fp32 "
            "(keep_fp32=[...]); max_consecutive_skips sets the limit.",
            skipped=skipped,
            first_bad_layer=bad,
        )

    # -- diagnostics and state ------------------------------------------------------------------------------
    def numerics_report(self) -> NumericsReport:
        """The numerics sampled so far (requires ``diagnostics=True``)."""
        if self._numerics is None:
            raise StepOrderError("diagnostics are off; create MixedPrecision(..., diagnostics=True)")
        return NumericsReport(tuple(self._numerics.samples), str(self.policy), self._numerics.config)

    def state_dict(self) -> dict[str, Any]:
        """Scaler state, policy, loss-scale options, statistics and (with master weights) the fp32 masters."""
        return {
            "version": STATE_VERSION,
            "policy": self.policy.to_dict(),
            "loss_scale": self.loss_scale.to_dict(),
            "scaler": self.scaler.state_dict(),
            "stats": self.stats.to_dict(),
            "micro_batches": self._micro,
            "master_weights": self.master.state_dict() if self.master is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the policy must match this instance's.

        Every entry is checked first (:func:`~mixq.amp.checkpoint.parse_state`): a bad state raises and changes
        nothing.
        """
        shapes = [m.shape for _, m in self.master.pairs] if self.master is not None else None
        loaded = parse_state(state, self.policy, self.accumulation_steps, shapes)
        if loaded.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(loaded.scaler)
        self.loss_scale, self.stats, self._micro = loaded.loss_scale, loaded.stats, loaded.micro_batches
        if self.master is not None and loaded.master_weights is not None:
            self.master.load_state_dict(loaded.master_weights)

    def remove(self) -> None:
        """Undo the float32 overrides and the output cast (master weights stay as they are)."""
        self._overrides.remove()
        if self._output_cast is not None:
            self._output_cast.remove()

    def __repr__(self) -> str:
        return (
            f"MixedPrecision(policy={self.policy}, device={self.device_type!r}, scale={self.scale:g}, "
            f"keep_fp32={list(self.keep_fp32)}, native_norms={list(self.native_norms)}, "
            f"master_weights={self.master is not None})"
        )
