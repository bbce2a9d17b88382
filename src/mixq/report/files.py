"""Atomic output files: write to a temporary name in the target directory, then rename over the target.

SIGTERM (what ``timeout``, CI cancellation and ``docker stop`` send) is treated like Ctrl-C while a write is in
flight: it raises :class:`Terminated`, so the temporary files are removed and the targets stay as they were.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from mixq.messages import first_line

__all__ = ["StagedOutputs", "Terminated", "atomic_path", "atomic_write_text", "check_writable", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised like ``KeyboardInterrupt`` so every ``finally`` and cleanup runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of killing the process outright (only from
    the main thread, and only where nobody installed a SIGTERM handler of their own)."""
    install = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL, None)
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if install else None
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)


def check_writable(directory: str | os.PathLike, fix: str = "choose a directory you can write to") -> None:
    """Fail before the work, not after it, when no file can be created in ``directory`` (read-only, no permission):
    an ``OSError`` of the same kind saying so, then ``fix``. The export and the command line both call it.

    Example: ``check_writable(Path("out"), fix="export to a directory you can write to")``.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".mixq-probe-", dir=directory)
    except OSError as err:
        raise type(err)(err.errno, f"cannot create files in {str(directory)!r} ({err.strerror or first_line(err)}); "
                        f"{fix}") from err
    os.close(fd)
    os.remove(probe)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed to ``target``, on error removed.

    An interrupted run (Ctrl-C or SIGTERM) therefore never leaves a half-written file at ``target``.

    Example::

        with atomic_path("plot.png") as tmp:
            figure.savefig(tmp, format="png")
    """
    target = Path(target)
    with sigterm_as_interrupt():
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            os.close(fd)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
            yield Path(tmp)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


class StagedOutputs:
    """Several output files written as one: all of them replace their targets, or none does.

    Each file is written into a hidden staging directory next to the targets (:meth:`path`); when the block ends
    without an error, the staged files are moved into place with SIGINT/SIGTERM held back, and if a move fails
    the targets already replaced are restored. An error, Ctrl-C or SIGTERM before that removes the staging
    directory and leaves every target as it was.

    Example::

        with StagedOutputs(out_dir) as stage:
            export_onnx(model, x, stage.path("model.onnx"))
            atomic_write_text(stage.path("model.mixq.json"), sidecar)
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.stage: Path | None = None

    def __enter__(self) -> StagedOutputs:
        self._signals = sigterm_as_interrupt()
        self._signals.__enter__()
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=".mixq-stage-", dir=self.directory))
        except BaseException:
            self._signals.__exit__(None, None, None)
            raise
        return self

    def path(self, name: str) -> Path:
        """Where to write the output that will be ``directory / name``."""
        if self.stage is None:
            raise RuntimeError("use StagedOutputs as a context manager: with StagedOutputs(directory) as stage")
        return self.stage / name

    def __exit__(self, kind: object, error: object, tb: object) -> None:
        try:
            if kind is None:
                self._commit()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)  # type: ignore[arg-type]
            self._signals.__exit__(None, None, None)

    def _commit(self) -> None:
        staged = sorted(p for p in self.stage.iterdir() if p.is_file())  # type: ignore[union-attr]
        blocked = {signal.SIGINT, signal.SIGTERM}
        masked = threading.current_thread() is threading.main_thread()
        if masked:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        done: list[tuple[Path, Path | None]] = []
        try:
            for source in staged:
                target = self.directory / source.name
                backup = None
                if target.exists():
                    backup = self.stage / f".{source.name}.previous"  # type: ignore[operator]
                    try:  # a second name for the old file, so the target never goes missing
                        os.link(target, backup, follow_symlinks=False)
                    except OSError:
                        shutil.copy2(target, backup, follow_symlinks=False)
                os.replace(source, target)
                done.append((target, backup))
        except BaseException:
            for target, backup in reversed(done):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(target)
            raise
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
