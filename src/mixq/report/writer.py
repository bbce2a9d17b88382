"""Write a report directory: ``report.md``, ``report.html`` and ``report.json`` from a list of sections."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from mixq.report.document import Section, render_html, render_markdown
from mixq.report.files import atomic_write_text


def write_report(out_dir: str | os.PathLike, title: str, sections: list[Section],
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the three report files atomically into ``out_dir`` and return the path of ``report.md``.

    ``report.json`` holds ``meta`` plus each section's ``data`` under the section's ``key``.
    """
    out = Path(out_dir)
    data: dict[str, Any] = {"title": title, **(meta or {})}
    for section in sections:
        if section.data is not None:
            data[section.key] = section.data
    atomic_write_text(out / "report.json", json.dumps(_finite(data), indent=2, default=_jsonable) + "\n")
    atomic_write_text(out / "report.html", render_html(title, sections))
    return atomic_write_text(out / "report.md", render_markdown(title, sections))


def _finite(value: Any) -> Any:
    """Replace inf/NaN floats (not valid JSON) with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "to_dict"):
        return _finite(value.to_dict())
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
