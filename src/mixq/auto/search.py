"""The greedy search: from static int8 everywhere, move the layer that currently hurts most one useful rung up its
ladder, evaluate, repeat until ``eval_fn`` is within the target or the evaluation budget is spent.

"Hurts most" is the lowest model-output SQNR of a layer at its current rung (from the sensitivity pass, no
evaluation needed), except that layers whose measured ``eval_fn`` drop alone was negligible go last. A "useful"
rung improves that layer's SQNR by at least ``min_gain_db`` and, for a layer below the typical (median) layer, lifts
it to the typical level; rungs that do neither are skipped without spending an evaluation. With
``objective="accuracy"`` a layer jumps straight to its most accurate rung short of fp32.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from mixq.auto.evaluation import BudgetExhausted
from mixq.auto.ladder import Rung
from mixq.auto.sensitivity import LayerSensitivity


@dataclass(frozen=True)
class Outcome:
    """Where the search ended: the assignment (rung index per layer) chosen and its metric (the target met, or the
    best configuration seen when the target or the budget ran out)."""

    assignment: dict[str, int]
    metric: float


class GreedySearch:
    """Greedy climb of the per-layer ladders; see the module docstring."""

    def __init__(self, ladders: dict[str, list[Rung]], sensitivity: list[LayerSensitivity], objective: str,
                 min_gain_db: float = 1.0, harmless: frozenset[str] = frozenset()) -> None:
        self.ladders = ladders
        self.sqnr = {r.name: [r.rung_sqnr_db[rung.label] for rung in ladders[r.name]] for r in sensitivity}
        self.rank = {r.name: i for i, r in enumerate(sensitivity)}
        finite = [v[0] for v in self.sqnr.values() if math.isfinite(v[0])]
        self.typical = statistics.median(finite) if finite else math.inf
        self.objective, self.min_gain_db, self.harmless = objective, min_gain_db, harmless

    def pick(self, assignment: dict[str, int]) -> str | None:
        """The layer to move next, or None when every layer is fp32."""
        movable = [n for n, i in assignment.items() if i < len(self.ladders[n]) - 1]
        if not movable:
            return None
        return min(movable, key=lambda n: (n in self.harmless, self.sqnr[n][assignment[n]], self.rank[n]))

    def next_rung(self, name: str, current: int) -> int:
        """The next rung worth an evaluation for ``name`` (fp32 when no intermediate one helps enough)."""
        sqnr, last = self.sqnr[name], len(self.ladders[name]) - 1
        need = sqnr[current] + self.min_gain_db
        if sqnr[current] < self.typical:
            need = max(need, self.typical)
        options = range(current + 1, last)
        if self.objective == "accuracy":
            best = max(options, key=lambda r: (sqnr[r], -r), default=None)
            return best if best is not None and sqnr[best] >= need else last
        return next((r for r in options if sqnr[r] >= need), last)

    def run(self, start: dict[str, int], start_metric: float, meets: Callable[[float], bool],
            evaluate: Callable[[dict[str, int], str], float]) -> Outcome:
        """Climb from ``start`` (already evaluated at ``start_metric``); ``evaluate(assignment, action)`` returns
        the metric and may raise ``BudgetExhausted``; the best configuration seen is returned if none meets."""
        assignment, metric = dict(start), start_metric
        best = (metric, dict(assignment))
        while not meets(metric):
            name = self.pick(assignment)
            if name is None:
                break
            was, rung = assignment[name], self.next_rung(name, assignment[name])
            trial = {**assignment, name: rung}
            action = f"{name}: {self.ladders[name][was].label} -> {self.ladders[name][rung].label}"
            try:
                metric = evaluate(trial, action)
            except BudgetExhausted:
                return Outcome(best[1], best[0])
            assignment = trial
            if metric > best[0]:
                best = (metric, dict(assignment))
        if meets(metric):
            return Outcome(assignment, metric)
        return Outcome(best[1], best[0])
