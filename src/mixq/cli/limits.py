"""One size guard for every allocation a user's numbers drive (``bench --shape/--batch``, ``--example-shape`` of a
Hugging Face model): the bytes are estimated from the numbers alone and refused (exit 2, one line) past the
memory this machine has available, before anything is allocated. Without it a typo such as
``--shape input_ids=1x1000000000000`` ends in ``MemoryError: Unable to allocate 7.28 TiB`` (or in the kernel's
OOM killer)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mixq.cli.errors import CliError


def available_bytes() -> int:
    """Memory a command may use now: Linux's MemAvailable, else half the physical memory (16 GiB if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _gib(n: float) -> str:
    return f"{n / 2**40:.2f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def refuse_past_memory(nbytes: float, what: str, fix: str, bound: str = "about") -> None:
    """CliError when ``nbytes`` (what ``what`` would allocate) exceeds :func:`available_bytes`."""
    limit = available_bytes()
    if nbytes > limit:
        raise CliError(f"{what} would need {bound} {_gib(nbytes)} of memory, more than the {_gib(limit)} available",
                       fix)


def check_bench_inputs(settings: Iterable[Any], litert_shapes: Sequence[Mapping[str, Sequence[Any]]]) -> None:
    """Refuse a ``mixq bench`` column whose inputs would not fit in memory: ``--shape`` / planned shapes at 8 bytes
    an element (int64 ids are the widest input), and for a ``--batch`` size, each .tflite file's own inputs
    (``litert_shapes``: name -> shape, batch first) at that batch."""
    for setting in settings:
        total = sum(math.prod(int(d) for d in shape) * 8 for shape in setting.shapes.values())
        if setting.batch is not None:
            for shapes in litert_shapes:
                total += sum(setting.batch * math.prod(int(d) for d in shape[1:]) * 8 for shape in shapes.values())
        option = "--batch" if setting.batch is not None and not setting.arrays else "--shape"
        refuse_past_memory(total, f"the inputs of column {setting.header!r} ({option})",
                           "pass smaller shapes (the batch and sequence a real request has, e.g. input_ids=1x128)"
                           if option == "--shape" else "pass smaller batch sizes, e.g. --batch 1,32", bound="up to")


def check_token_shape(config: Any, batch: int, sequence: int, what: str) -> None:
    """Refuse a token batch whose forward pass would not fit: inputs, a layer's hidden and intermediate
    activations, the logits over the vocabulary and one layer's attention scores, at 4 bytes a value."""
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 1)
    inner = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden)
    vocab = int(getattr(config, "vocab_size", None) or 1)
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1)
    tokens = batch * sequence
    nbytes = tokens * 8 * 3 + tokens * (4 * hidden + inner + vocab) * 4 + batch * heads * sequence ** 2 * 4
    refuse_past_memory(nbytes, f"{what} {batch},{sequence} ({tokens} tokens)",
                       "pass the batch and sequence length of a real request, e.g. 2,128")
