"""Error-message helpers shared by the library and the command line (no dependencies: anything may import it)."""

from __future__ import annotations

__all__ = ["first_line"]


def first_line(err: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message, stripped (its type name when the message is empty),
    cut to ``limit`` characters when given.

    Example: ``first_line(ValueError("bad shape\\n  at layer 3"))`` is ``"bad shape"``.
    """
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if limit is None else line[:limit]
