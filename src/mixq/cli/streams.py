"""Standard output that survives a closed pipe: ``mixq quantize ... | head -1`` still writes its files.

When the reader goes away, further output is dropped (and the descriptor pointed at /dev/null, so the final
flush at exit is quiet) instead of a ``BrokenPipeError`` ending the command half-way.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any


class _PipeSafe(io.TextIOBase):
    def __init__(self, stream: Any) -> None:
        self._stream, self._closed_pipe = stream, False

    def _silence(self) -> None:
        self._closed_pipe = True
        with contextlib.suppress(Exception):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        if not self._closed_pipe:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self) -> None:
        if not self._closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


@contextlib.contextmanager
def pipe_safe_stdout() -> Iterator[None]:
    """Within the block, ``print`` to a closed pipe is dropped instead of raising ``BrokenPipeError``."""
    original = sys.stdout
    sys.stdout = _PipeSafe(original)  # type: ignore[assignment]
    try:
        yield
    finally:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()
        sys.stdout = original
