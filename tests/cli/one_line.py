"""The check every bad-input CLI test makes: exit code 2, one ``mixq ...`` line naming the problem, no traceback,
and no output file left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def assert_one_line_error(mixq_main: Callable[..., tuple[int, str, str]], cwd: Path, args: list[str],
                          message: str, output: str = "bad.onnx") -> None:
    code, _, err = mixq_main(*args, cwd=cwd)
    lines = [ln for ln in err.splitlines() if ln.startswith("mixq ")]
    assert code == 2, err
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and not (cwd / output).exists()
