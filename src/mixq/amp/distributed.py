"""Helpers for DistributedDataParallel and FSDP2 (``fully_shard``) models.

DDP all-reduces gradients during ``backward``, so every rank sees the same found-inf verdict. FSDP shards the
gradients, so each rank's ``unscale_`` only inspects its shard: the verdict must be all-reduced (MAX)
before the step, or ranks would skip different steps and their loss scales would drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "all_reduce_max_",
    "is_ddp",
    "is_fsdp",
    "is_sharded_or_replicated",
    "maybe_no_sync",
    "unwrap",
    "world_size",
]


def world_size() -> int:
    """Number of ranks in the default process group, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_ddp(model: nn.Module) -> bool:
    """Whether ``model`` is a :class:`torch.nn.parallel.DistributedDataParallel` wrapper."""
    return isinstance(model, nn.parallel.DistributedDataParallel)


def is_fsdp(model: nn.Module) -> bool:
    """Whether ``model`` (or a submodule) was sharded with ``torch.distributed.fsdp.fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def is_sharded_or_replicated(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped by DDP or FSDP."""
    return is_ddp(model) or is_fsdp(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place: returned as is)."""
    return model.module if is_ddp(model) else model


def all_reduce_max_(flag: torch.Tensor) -> torch.Tensor:
    """In-place MAX all-reduce of a small flag tensor across the default group (no-op on one rank)."""
    if world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """``model.no_sync()`` for DDP micro-batches that only accumulate; a no-op otherwise."""
    if skip_sync and is_ddp(model):
        with model.no_sync():
            yield
    else:
        yield
