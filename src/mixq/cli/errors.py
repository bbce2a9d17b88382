"""The command line's error type: bad input, reported as one line naming the problem and the fix (exit code 2)."""

from __future__ import annotations

import os
from pathlib import Path

from mixq.messages import first_line  # the CLI's modules import it from here too
from mixq.report.files import check_writable

USAGE_ERROR = 2  # the exit code of bad input, as for argparse's own errors
FAILURE = 1  # the exit code when a valid request failed


class CliError(Exception):
    """Bad input from the user: ``problem`` says what is wrong, ``fix`` what to do about it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem, self.fix = problem, fix


def existing_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is an existing file; otherwise a CliError naming ``what`` (e.g. ``--weights``)."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{what} {str(p)!r} is a directory, not a file", "pass the path of the file itself")
    if not p.exists():
        hint = f" (the directory {str(p.parent)!r} does not exist either)" if not p.parent.exists() else ""
        raise CliError(f"{what} {str(p)!r} does not exist{hint}", "check the path (relative paths start from the "
                       f"current directory, {os.getcwd()!r})")
    if not os.access(p, os.R_OK):
        raise CliError(f"{what} {str(p)!r} is not readable (permission denied)",
                       "fix its permissions (chmod u+r) or pass a copy you can read")
    return p


def _same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name one file: the same path, a symlink to it, or a hard link of it."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def require_writable(directory: Path, what: str) -> None:
    """``mixq.report.files.check_writable`` for the command line: a CliError naming ``what`` (e.g. ``--output``)."""
    try:
        check_writable(directory)
    except OSError as err:
        cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
        raise CliError(f"cannot write {what} into {str(directory)!r} ({cause.strerror or first_line(cause)})",
                       "choose a directory you can write to, or fix its permissions") from err


def output_file(path: str | os.PathLike, what: str, suffix: str, inputs: list[Path]) -> Path:
    """Validate an output path: right suffix, an existing writable directory, and not one of the ``inputs`` (the
    same path, a symlink or a hard link to one: mixq never overwrites its inputs, whatever their names)."""
    p = Path(path)
    if p.suffix != suffix:
        raise CliError(f"{what} {str(p)!r} does not end in {suffix}", f"name the output file like model{suffix}")
    if not p.parent.exists():
        raise CliError(f"the directory of {what} {str(p)!r} does not exist",
                       f"create it first (mkdir -p {p.parent}) or choose another path")
    if p.is_dir():
        raise CliError(f"{what} {str(p)!r} is a directory", f"pass a file name ending in {suffix}")
    for source in inputs:
        if _same_file(p, source):
            raise CliError(f"{what} {str(p)!r} is also an input ({str(source)!r}), and mixq never overwrites its "
                           "inputs", "choose another output path")
    require_writable(p.parent, what)
    return p
