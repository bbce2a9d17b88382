"""Runtime failures the command line reports as what they are (exit 1), not as bad input: a full disk, a quota,
an I/O error while writing. Exporters wrap the ``OSError`` in their own errors; :func:`disk_error` finds it."""

from __future__ import annotations

import errno
import os

DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
               errno.EIO: "an input/output error", errno.EFBIG: "the file is too large for the file system"}


def disk_error(err: BaseException) -> OSError | None:
    """The OSError of a full disk (or quota, or I/O error) anywhere in ``err``'s chain of causes, else None."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and all(cause is not c for c in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            return cause
    if any("No space left on device" in str(c) for c in chain):  # a C++ exporter reports errno 28 as text only
        return OSError(errno.ENOSPC, "No space left on device")
    return None


def describe_disk_error(err: OSError) -> str:
    """One line: what went wrong, where, and that existing files were left as they were."""
    where = f" writing into {os.path.dirname(os.path.abspath(err.filename))}" if err.filename else " while writing"
    return (f"{DISK_ERRNOS.get(err.errno, err.strerror or 'a write failed')}{where}; no output was written and any "
            "existing file was left as it was (free some space, or choose another --output directory)")
