"""Latency decisions on signal, not noise: paired, repeated, interleaved timings with a significance margin.

Two ONNX Runtime sessions are timed in ``pairs`` rounds, each round running both (order alternating) ``calls``
times; a side counts as faster only when its median is at least ``margin`` below the other's *and* it won at least
the number of rounds a one-sided sign test needs at the 5 % level (12 of 15). Anything else is a tie, and ties
keep the default (int8), so a noisy machine can no longer push layers to fp32.

``layer_decisions`` answers "is int8 faster for this layer?" per distinct layer shape, from single-layer models
timed at the shapes the layer sees on ``example_inputs``: MiniLM's 36 Linears are 3 shapes, so 6 small exports
instead of 36 whole-model exports.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.quant.calibration import Batch, call_model
from mixq.quant.capture import first_call_inputs

MARGIN = 0.03
PAIRS = 15


def sign_test_wins(pairs: int, level: float = 0.05) -> int:
    """Fewest wins out of ``pairs`` that a one-sided sign test calls significant at ``level``."""
    for wins in range(pairs + 1):
        if sum(math.comb(pairs, k) for k in range(wins, pairs + 1)) / 2**pairs <= level:
            return wins
    return pairs + 1


@dataclass(frozen=True)
class Comparison:
    """Paired timing of ``a`` against ``b``: medians (ms per call) and rounds ``b`` won."""

    a_ms: float
    b_ms: float
    b_wins: int
    pairs: int
    margin: float = MARGIN

    @property
    def b_faster(self) -> bool:
        return self.b_ms < (1 - self.margin) * self.a_ms and self.b_wins >= sign_test_wins(self.pairs)

    @property
    def a_faster(self) -> bool:
        return self.a_ms < (1 - self.margin) * self.b_ms and self.pairs - self.b_wins >= sign_test_wins(self.pairs)


def paired(run_a: Callable[[], Any], run_b: Callable[[], Any], pairs: int = PAIRS, calls: int = 5,
           margin: float = MARGIN) -> Comparison:
    """Time ``run_a`` and ``run_b`` in ``pairs`` interleaved rounds of ``calls`` calls each (after warm-up)."""
    for _ in range(2):
        run_a()
        run_b()
    a_times, b_times, b_wins = [], [], 0
    for k in range(pairs):
        round_ms = {}
        for label, fn in (("a", run_a), ("b", run_b)) if k % 2 == 0 else (("b", run_b), ("a", run_a)):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            round_ms[label] = (time.perf_counter() - start) * 1e3 / calls
        a_times.append(round_ms["a"])
        b_times.append(round_ms["b"])
        b_wins += round_ms["b"] < round_ms["a"]
    return Comparison(statistics.median(a_times), statistics.median(b_times), b_wins, pairs, margin)


def layer_inputs(model: nn.Module, names: list[str], example: Batch) -> dict[str, torch.Tensor]:
    """The input each layer in ``names`` receives when ``model`` runs ``example`` (first call)."""
    return {n: args[0].detach() for n, (args, _) in first_call_inputs(model, names, example, call_model).items()}


def signature(layer: nn.Module, x: torch.Tensor) -> tuple:
    """Layers with equal signatures run the same kernels at the same shapes."""
    weight = getattr(layer, "weight", None)
    return type(layer).__name__, tuple(x.shape), tuple(weight.shape) if weight is not None else (), str(layer)


def compare_layer(float_layer: nn.Module, int8_layer: nn.Module, x: torch.Tensor, folder: Path, tag: str,
                  threads: int = 1, runtime: str = "ort") -> Comparison:
    """Paired timing of one layer in float (``a``) and int8 (``b``) at input ``x`` on ``runtime``."""
    from mixq.export.backend import get_format, get_runtime

    rt = get_runtime(runtime)
    fmt = get_format(rt.format)
    sessions = []
    for label, layer in (("fp32", float_layer), ("int8", int8_layer)):
        path = fmt.export(layer, x, folder / f"layer_{tag}_{label}{fmt.suffix}", runtime=runtime)
        session = rt.session(path, threads)
        feeds = rt.feeds(session, [x])
        sessions.append(lambda s=session, f=feeds: s.run(None, f))
    return paired(sessions[0], sessions[1], calls=10)
