"""``mixq bench --shape/--inputs`` values checked against the ONNX graphs before any timing (exit 2, one line):
inputs sharing a symbolic axis (``sequence``) of different sizes, token ids below 0 or past the table they index,
masks that are not 0/1, NaN or inf floats, and a sequence longer than the model's position table. Without these
checks ONNX Runtime fails inside the timed run (an ``n/a`` column and its raw error) or times garbage silently."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixq.cli.errors import CliError

# float tables, and mixq's int8 ones (``QuantizedEmbedding.qweight``)
_POSITION_TABLES = tuple(f"{table}.{kind}" for table in ("position_embeddings", "wpe", "embed_positions")
                         for kind in ("weight", "qweight"))


def _agree(inputs: Sequence[Any], shapes: dict[str, tuple[int, ...]], option: str) -> None:
    """Every symbolic axis name gets one size across the inputs."""
    bound: dict[str, tuple[int, str, int]] = {}
    for i in inputs:
        for axis, (dim, size) in enumerate(zip(i.dims, shapes.get(i.name, ()), strict=False)):
            if not isinstance(dim, str):
                continue
            if dim in bound and bound[dim][0] != size:
                size0, name0, axis0 = bound[dim]
                raise CliError(f"{option} gives {i.name!r} axis {axis} ({dim}) size {size}, but {name0!r} axis "
                               f"{axis0}, the same {dim} axis in the graph, size {size0}",
                               "give inputs that share an axis the same size (e.g. input_ids and attention_mask)")
            bound.setdefault(dim, (size, i.name, axis))


def position_rows(path: Path) -> int | None:
    """The rows of a learned position table (BERT, GPT-2, OPT) in an ONNX file, when it has one by a known name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    rows = [t.dims[0] for t in graph.initializer if t.name.endswith(_POSITION_TABLES) and len(t.dims) == 2]
    return min(rows) if rows else None


def _values(arrays: dict[str, np.ndarray], limits: dict[str, int | None], option: str) -> None:
    for name, array in arrays.items():
        lowered = name.lower()
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise CliError(f"{option}: {name!r} holds NaN or inf values", "time on finite inputs")
        if not np.issubdtype(array.dtype, np.integer) or array.size == 0:
            continue
        low, high = int(array.min()), int(array.max())
        if "mask" in lowered and (low < 0 or high > 1):
            raise CliError(f"{option}: {name!r} holds values outside 0/1 ({low}..{high})",
                           "an attention mask holds 1 for tokens and 0 for padding")
        if low < 0:
            raise CliError(f"{option}: {name!r} holds negative values ({low})", "pass ids >= 0")
        limit = limits.get(name)
        if limit and high >= limit:
            raise CliError(f"{option}: {name!r} holds id {high}, but the table it indexes has {limit} rows "
                           f"(ids 0..{limit - 1})", "use this model's tokenizer, or ids below the vocabulary size")


def check_bench_values(settings: Sequence[Any], paths: Sequence[Path], sessions: Sequence[Any],
                       option: str | None) -> None:
    """Refuse ``--shape``/``--inputs`` columns the ONNX files cannot take (see the module docstring)."""
    from mixq.export.backend import runtime_for
    from mixq.report.feeds import graph_inputs, index_limits

    inputs = {k: graph_inputs(s) for k, (p, s) in enumerate(zip(paths, sessions, strict=True))
              if runtime_for(p).named_inputs}
    if option is None or not inputs:
        return

    reference = next(iter(inputs.values()))
    integer = [i.name for i in reference if np.issubdtype(i.dtype, np.integer)]
    limits: dict[str, int | None] = {}
    tables: list[int] = []
    for k in inputs:
        for name, limit in index_limits(paths[k], integer).items():
            limits[name] = limit if limits.get(name) is None else min(limits[name], limit or limits[name])
        if (rows := position_rows(paths[k])) is not None:
            tables.append(rows)
    for setting in settings:
        for own in inputs.values():
            _agree(own, setting.shapes, option)
        if setting.arrays:
            _values(setting.arrays, limits, option)
        lengths = [setting.shapes[n][-1] for n in integer if len(setting.shapes.get(n, ())) >= 2]
        if tables and lengths and max(lengths) > min(tables):
            raise CliError(f"{option} asks for sequences of {max(lengths)} tokens, but the model's position table has "
                           f"{min(tables)} rows", f"pass a sequence length <= {min(tables)}")
