"""Checking a ``MixedPrecision.state_dict()`` in full before any of it is applied.

A checkpoint that fails half-way through loading would leave the loss scale of one run and the statistics of
another; so every entry is parsed and checked here first, and ``load_state_dict`` only assigns the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from mixq.amp.loss_scale import LossScale
from mixq.amp.policy import Policy
from mixq.amp.stats import AmpStats

__all__ = ["STATE_VERSION", "LoadedState", "parse_state"]

STATE_VERSION = 1
_KEYS = ("version", "policy", "loss_scale", "scaler", "stats", "micro_batches", "master_weights")
_SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


@dataclasses.dataclass(frozen=True)
class LoadedState:
    """A checked checkpoint, ready to assign."""

    loss_scale: LossScale
    scaler: dict[str, Any]
    stats: AmpStats
    micro_batches: int
    master_weights: list[torch.Tensor] | None


def _positive_finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"invalid MixedPrecision state: {what} must be a positive finite number, got {value!r}")
    return float(value)


def _scaler(state: Any) -> dict[str, Any]:
    if not state:
        return {}
    if not isinstance(state, dict) or any(k not in state for k in _SCALER_KEYS):
        raise ValueError(f"invalid MixedPrecision state: 'scaler' must be a GradScaler state with keys "
                         f"{', '.join(_SCALER_KEYS)}")
    for key in ("scale", "growth_factor", "backoff_factor"):
        _positive_finite(state[key], f"scaler {key}")
    for key in ("growth_interval", "_growth_tracker"):
        if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
            raise ValueError(f"invalid MixedPrecision state: scaler {key} must be an int >= 0, got {state[key]!r}")
    return dict(state)


def _stats(data: Any) -> AmpStats:
    try:
        stats = AmpStats.from_dict(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"invalid MixedPrecision state: 'stats' is malformed ({type(err).__name__}: {err})") from err
    _positive_finite(stats.scale, "stats scale")
    if not 0 <= stats.skipped_steps <= stats.steps:
        raise ValueError(f"invalid MixedPrecision state: {stats.skipped_steps} skipped of {stats.steps} steps")
    return stats


def _masters(saved: Any, shapes: Sequence[torch.Size] | None) -> list[torch.Tensor] | None:
    if (saved is None) != (shapes is None):
        raise ValueError("checkpoint and this MixedPrecision disagree on master_weights")
    if saved is None or shapes is None:
        return None
    if not isinstance(saved, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in saved):
        raise ValueError("invalid MixedPrecision state: 'master_weights' must be a list of tensors")
    if len(saved) != len(shapes):
        raise ValueError(f"state has {len(saved)} master weights but this model has {len(shapes)}; "
                         "was it saved from a different model or keep_fp32 setting?")
    for i, (t, shape) in enumerate(zip(saved, shapes, strict=True)):
        if t.shape != shape:
            raise ValueError(f"master weight {i} has shape {tuple(t.shape)}, the model's is {tuple(shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"invalid MixedPrecision state: master weight {i} holds inf/NaN values")
    return list(saved)


def _entry(state: dict[str, Any], key: str, parse: Any) -> Any:
    try:
        return parse(state[key])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"invalid MixedPrecision state: {key!r} is malformed ({type(err).__name__}: {err})") from err


def parse_state(state: Any, policy: Policy, accumulation_steps: int,
                master_shapes: Sequence[torch.Size] | None) -> LoadedState:
    """Check ``state`` against this run (its policy, accumulation and master weights); raise a ``ValueError``
    (``TypeError`` for a non-dict) naming the first bad entry, before anything is changed."""
    if not isinstance(state, dict):
        raise TypeError(f"a MixedPrecision state is the dict state_dict() returns, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported MixedPrecision state version {state.get('version')!r}")
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ValueError(f"invalid MixedPrecision state: missing {', '.join(map(repr, missing))}; pass what "
                         "MixedPrecision.state_dict() returned")
    saved, loss_scale = _entry(state, "policy", Policy.from_dict), _entry(state, "loss_scale", LossScale.from_dict)
    if saved != policy:
        raise ValueError(f"checkpoint was saved with policy {saved}, but this MixedPrecision uses {policy}")
    micro = state["micro_batches"]
    if isinstance(micro, bool) or not isinstance(micro, int) or not 0 <= micro < accumulation_steps:
        raise ValueError(f"invalid MixedPrecision state: micro_batches={micro!r} is not in "
                         f"[0, accumulation_steps={accumulation_steps})")
    return LoadedState(loss_scale, _scaler(state["scaler"]), _stats(state["stats"]), micro,
                       _masters(state["master_weights"], master_shapes))
