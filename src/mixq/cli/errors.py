"""The command line's error type: bad input, reported as one line naming the problem and the fix (exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path

USAGE_ERROR = 2  # the exit code of bad input, as for argparse's own errors
FAILURE = 1  # the exit code when a valid request failed


class CliError(Exception):
    """Bad input from the user: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file; otherwise a CliError naming ``what`` (e.g. ``--weights``)."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{what} {str(p)!r} is a directory, not a file", "pass the path of the file itself")
    if not p.exists():
        hint = f" (the directory {str(p.parent)!r} does not exist either)" if not p.parent.exists() else ""
        raise CliError(f"{what} {str(p)!r} does not exist{hint}", "check the path (relative paths start from the "
                       f"current directory, {os.getcwd()!r})")
    return p


def output_file(path: str | os.PathLike, what: str, suffix: str, inputs: list[Path]) -> Path:
    """Validate an output path: right suffix, existing directory, and not one of the ``inputs``."""
    p = Path(path)
    if p.suffix != suffix:
        raise CliError(f"{what} {str(p)!r} does not end in {suffix}", f"name the output file like model{suffix}")
    if not p.parent.exists():
        raise CliError(f"the directory of {what} {str(p)!r} does not exist",
                       f"create it first (mkdir -p {p.parent}) or choose another path")
    if p.is_dir():
        raise CliError(f"{what} {str(p)!r} is a directory", f"pass a file name ending in {suffix}")
    for source in inputs:
        if p.exists() and source.exists() and os.path.samefile(p, source):
            raise CliError(f"{what} {str(p)!r} is also an input file, and mixq never overwrites its inputs",
                           "choose another output path")
    return p
