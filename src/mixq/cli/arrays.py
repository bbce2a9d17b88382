"""Reading input arrays from ``.npy``/``.npz`` files lazily: only the rows a command will use are read, and a file
that would expand to an absurd size in memory is refused before anything is read.

A compressed ``.npz`` of a few MB can expand to GBs; ``numpy.load`` would decompress every array whole. Here the
``.npy`` headers are read first (shape and dtype, so the size is known), ``.npy`` files are memory-mapped, and
``.npz`` members are decompressed as a stream up to the rows needed.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from mixq.cli.errors import CliError, first_line

__all__ = ["MAX_BYTES", "read_arrays"]

_FIX = "save inputs with numpy.save (.npy, one input) or numpy.savez (.npz, one array per input)"


def _memory_limit() -> int:
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 16 << 30
    return min(8 << 30, physical // 2)


MAX_BYTES = _memory_limit()  # the most input data a command reads into memory: 8 GiB or half the RAM


def _header(stream: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        return np.lib.format.read_array_header_2_0(stream)
    except Exception as err:
        raise CliError(f"cannot read {where} as a NumPy array ({first_line(err)})", _FIX) from err


def _check(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise CliError(f"{where} holds Python objects (dtype {dtype}), which mixq does not unpickle",
                       "store inputs as float or integer arrays")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise CliError(f"{where} holds an array of dtype {dtype}", "store inputs as float or integer arrays")
    if len(shape) == 0:
        raise CliError(f"{where} is a 0-d array without a batch axis", "save arrays shaped (N, ...)")


def _size(shape: tuple[int, ...], dtype: np.dtype, rows: int | None) -> int:
    n = shape[0] if rows is None else min(rows, shape[0])
    return n * math.prod(shape[1:]) * dtype.itemsize


def _refuse_large(total: int, path: Path) -> None:
    if total > MAX_BYTES:
        raise CliError(f"{path} would take {total / 2**30:.1f} GiB in memory (more than the {MAX_BYTES / 2**30:.1f}"
                       " GiB mixq reads as input)", "pass --max-calib-batches N to read fewer samples, or a smaller "
                       "file")


def _read_npy(path: Path, rows: int | None) -> list[np.ndarray]:
    with open(path, "rb") as f:
        shape, fortran, dtype = _header(f, str(path))
    _check(shape, dtype, str(path))
    _refuse_large(_size(shape, dtype, rows), path)
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:
        raise CliError(f"cannot read {path} as NumPy data ({first_line(err)})", _FIX) from err
    return [np.array(mapped[:rows])]


def _read_member(archive: zipfile.ZipFile, name: str, path: Path, rows: int | None) -> np.ndarray:
    where = f"{path} (array {name.removesuffix('.npy')!r})"
    with archive.open(name) as stream:
        shape, fortran, dtype = _header(stream, where)
        _check(shape, dtype, where)
        n = shape[0] if rows is None or fortran else min(rows, shape[0])
        want = n * math.prod(shape[1:]) * dtype.itemsize
        data = stream.read(want)
    if len(data) != want:
        raise CliError(f"{where} is truncated ({len(data)} of {want} bytes)", _FIX)
    array = np.frombuffer(data, dtype=dtype)
    if fortran:
        return np.array(array.reshape(shape[::-1]).T[:rows])
    return array.reshape((n, *shape[1:])).copy()


def _read_npz(path: Path, rows: int | None) -> list[np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CliError(f"cannot read {path} as NumPy data ({first_line(err)})", _FIX) from err
    with archive:
        names = [n for n in archive.namelist() if n.endswith(".npy")]
        total = 0
        for name in names:  # every header first: refuse before decompressing anything
            with archive.open(name) as stream:
                shape, fortran, dtype = _header(stream, f"{path} (array {name.removesuffix('.npy')!r})")
            _check(shape, dtype, f"{path} (array {name.removesuffix('.npy')!r})")
            total += _size(shape, dtype, None if fortran else rows)
        _refuse_large(total, path)
        return [_read_member(archive, name, path, rows) for name in names]


def read_arrays(path: Path, rows: int | None = None) -> list[np.ndarray]:
    """The arrays in a ``.npy`` (one) or ``.npz`` (one per input, in file order), each cut to its first ``rows``
    rows (all when ``None``); a CliError for anything that is not numeric arrays or would not fit in memory."""
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be >= 1 or None, got {rows}")
    if path.suffix == ".npz":
        return _read_npz(path, rows)
    return _read_npy(path, rows)
