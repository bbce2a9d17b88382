"""QAT as the last resort: when post-training choices cannot meet the target and the caller gave a ``train_fn``.

QAT lives in ``mixq.qat`` (``mixq.prepare_qat`` / ``mixq.convert``): an all-int8 QAT copy of the model is fine-tuned
with ``train_fn``, converted and evaluated once, and kept when it scores higher than the post-training choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mixq.auto.evaluation import BudgetExhausted, Evaluator
from mixq.qat import convert, prepare_qat
from mixq.quant.graft import copy_model


class TrainFnError(RuntimeError):
    """``train_fn`` raised while fine-tuning the QAT model."""


def try_qat(model: nn.Module, train_fn: Callable[[nn.Module], Any], example_inputs: Any, evaluate: Evaluator,
            notes: list[str]) -> tuple[nn.Module, float] | None:
    """Prepare a QAT copy of ``model`` (int8 weights and activations), fine-tune it with ``train_fn(qat_model)``,
    convert and evaluate it. Returns ``(model, metric)``, or None (with a note) when no evaluation is left."""
    if evaluate.left < 1:
        notes.append("train_fn was given but the evaluation budget was spent; QAT was skipped")
        return None
    qat_model = prepare_qat(copy_model(model), example_inputs=example_inputs, weight_bits=8)
    try:
        train_fn(qat_model)
    except Exception as err:
        name = getattr(train_fn, "__name__", type(train_fn).__name__)
        raise TrainFnError(f"train_fn {name!r} raised {type(err).__name__} while fine-tuning the QAT model: "
                           f"{err}") from err
    qmodel = convert(qat_model)
    try:
        metric = evaluate(qmodel, "QAT int8")
    except BudgetExhausted:
        return None
    notes.append(f"QAT fine-tuning with train_fn scored {metric:.4g}")
    return qmodel, metric
