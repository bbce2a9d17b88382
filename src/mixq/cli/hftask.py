"""``--hf-task`` checked against the ``architectures`` that ``config.json`` records, before any weight is loaded.

Loading a directory as another task's class can succeed: a sequence classifier loaded for token classification
applies its sentence head to every token (and drops the pooler), a masked LM loaded as a causal LM fails only at
the decoder export a minute later. transformers' own Auto mappings say which classes each task's Auto class
builds; an architecture that one of them names for another task is refused in one line naming both.
"""

from __future__ import annotations

import json
from pathlib import Path

from mixq.cli.errors import CliError

MAPPINGS = {  # --hf-task -> the transformers.models.auto.modeling_auto mappings whose classes it loads exactly
    "causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",),
    "masked-lm": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
    "sequence-classification": ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",),
    "token-classification": ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",),
    "question-answering": ("MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",),
    "base": ("MODEL_MAPPING_NAMES",),
}


def _classes(mapping_names: tuple[str, ...]) -> set[str]:
    from transformers.models.auto import modeling_auto

    classes: set[str] = set()
    for name in mapping_names:
        for value in getattr(modeling_auto, name, {}).values():
            classes.update(value if isinstance(value, (tuple, list)) else (value,))
    return classes


def architectures(directory: Path) -> list[str]:
    """The class names ``config.json`` records (empty when it records none or cannot be read)."""
    try:
        archs = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return []  # transformers' own load reports an unreadable config.json
    return [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []


def check_task(directory: Path, task: str) -> None:
    """Refuse (CliError) ``task`` when ``config.json`` says the weights were saved as another task's class. Any
    task may load the bare model (``base``); architectures transformers does not map are left to the load."""
    saved = architectures(directory)
    if task == "base" or not saved:
        return
    wanted = _classes(MAPPINGS[task])
    if any(a in wanted for a in saved):
        return
    owners = [t for t in MAPPINGS if any(a in _classes(MAPPINGS[t]) for a in saved)]
    if not owners:
        return
    arch = saved[0]
    fits = [t for t in owners if t != "base"] or ["base"]
    what = "the bare model without a task head" if fits == ["base"] else f"a {fits[0]} model"
    raise CliError(f"--hf-task {task} does not match {str(directory)!r}: config.json says it was saved as {arch} "
                   f"({what}), whose head does not fit {task}",
                   f"pass --hf-task {fits[0]}" + ("" if fits == ["base"] else " (or base for the bare model)"))
