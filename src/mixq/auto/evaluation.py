"""Calling the user's ``eval_fn``: validation of what it returns, a clear error when it fails, and the budget."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import nn


class EvalFnError(RuntimeError):
    """``eval_fn`` raised, or returned something other than a finite number."""


class BudgetExhausted(Exception):
    """Internal: the evaluation budget is spent (the search then returns the best configuration found)."""


class Evaluator:
    """Counts ``eval_fn`` calls against ``max_evals`` and checks every value it returns.

    Example: ``evaluate = Evaluator(eval_fn, 16); score = evaluate(model, "all-int8")``.
    """

    def __init__(self, eval_fn: Callable[[nn.Module], float], max_evals: int) -> None:
        if not callable(eval_fn):
            raise TypeError(f"eval_fn must be a callable taking a model and returning a float (higher is better), "
                            f"got {type(eval_fn).__name__}")
        self.eval_fn = eval_fn
        self.max_evals = max_evals
        self.calls = 0

    @property
    def left(self) -> int:
        return self.max_evals - self.calls

    def __call__(self, model: nn.Module, label: str) -> float:
        if self.calls >= self.max_evals:
            raise BudgetExhausted(label)
        self.calls += 1
        name = getattr(self.eval_fn, "__name__", type(self.eval_fn).__name__)
        try:
            with torch.no_grad():
                value = self.eval_fn(model)
        except SystemExit as err:  # an exit inside the metric is a failure of the metric, not the end of the run
            raise EvalFnError(f"eval_fn {name!r} called sys.exit({err.code!r}) while evaluating the {label} model; "
                              "it must return a float") from err
        except Exception as err:
            raise EvalFnError(f"eval_fn {name!r} raised {type(err).__name__} while evaluating the {label} model: "
                              f"{err}") from err
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise EvalFnError(f"eval_fn {name!r} returned a {type(value).__name__} for the {label} model; it must "
                              "return one float, higher is better (e.g. accuracy)")
        if not math.isfinite(float(value)):
            raise EvalFnError(f"eval_fn {name!r} returned {float(value)} for the {label} model; it must return a "
                              "finite float (check it on the fp32 model, e.g. for a division by zero)")
        return float(value)
