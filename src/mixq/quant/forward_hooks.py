"""One forward pass watched by module hooks: the hooks are registered for the pass and always removed after it."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["run_hooked"]

PreHook = Callable[[str, nn.Module, tuple], None]
PostHook = Callable[[str, nn.Module, tuple, object], None]


def run_hooked(model: nn.Module, modules: Iterable[tuple[str, nn.Module]], run: Callable[[nn.Module], object],
               pre: PreHook, post: PostHook) -> None:
    """Run ``run(model)`` without gradients with ``pre(name, module, args)`` and ``post(name, module, args,
    output)`` called around each call of the named ``modules``; the hooks are removed even if the pass fails."""
    handles = []
    for name, module in modules:
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: pre(n, m, a)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post(n, m, a, o)))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for handle in handles:
            handle.remove()
