"""Builders of the hostile inputs the bad-input suite feeds the command line (importable: tests/cli is on the
path). Each writes into the directory it is given and returns nothing."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

CALLABLES = '''
import sys
import torch


def strings():
    return ["a", "b"]


def empty():
    return [torch.zeros(0, 1, 8, 8)]


def raises():
    raise OSError("disk on fire")


def exits():
    sys.exit(0)


def nothing():
    return None


def tuple_of_str():
    return [(torch.rand(2, 1, 8, 8), "mask")]


def exiting_factory():
    sys.exit(3)


def not_a_model():
    return 42


def exiting_score(model):
    sys.exit(0)


def nan_score(model):
    return float("nan")


def inf_weights():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        model[2].weight[1, 3] = float("inf")
    return model


def nan_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    model[1].running_var[2] = float("nan")
    return model
'''


def _bomb(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz of zeros: a few MB on disk, ``prod(shape) * 4`` bytes once decompressed (written in chunks)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    chunk = bytes(1 << 24)
    total = int(np.prod(shape)) * 4
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        member.write(header.getvalue())
        for start in range(0, total, len(chunk)):
            member.write(chunk[: min(len(chunk), total - start)])


def _small_onnx(path: Path) -> None:
    """A float CNN taking ``x [batch, 1, 8, 8]`` (symbolic batch)."""
    import torch

    import mixq

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    mixq.export_onnx(model.eval(), torch.rand(1, 1, 8, 8), path, input_names=["x"])


def build(root: Path, user_dir: Path) -> None:
    """Copy the user's files from ``user_dir`` and add the hostile ones next to them."""
    for name in ("nets.py", "w.pt", "calib.npy", "bad.npy"):
        shutil.copy(user_dir / name, root / name)
    (root / "hostile.py").write_text(CALLABLES)
    shutil.copy(root / "w.pt", root / "w.onnx")  # weights whose name looks like an output
    shutil.copy(root / "w.pt", root / "side.mixq.json")  # weights named like the sidecar of side.onnx
    shutil.copy(root / "w.pt", root / "rep.autoquant.json")  # weights named like a report of rep.onnx
    os.symlink("w.onnx", root / "link.onnx")
    os.link(root / "w.onnx", root / "hard.onnx")
    os.symlink("calib.npy", root / "calib_link.onnx")
    os.symlink("nets.py", root / "nets_link.onnx")
    (root / "dir.onnx").mkdir()
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    (root / "garbage.onnx").write_bytes(b"\x08\x07garbage")
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "notes.txt").write_text("not data")
    rng = np.random.default_rng(0)
    np.savez(root / "objects.npz", x=np.array([{"a": 1}, None], dtype=object))
    np.save(root / "strings.npy", np.array(["a", "b"]))
    np.save(root / "complex.npy", np.zeros((4, 1, 8, 8), np.complex64))
    np.save(root / "scalar.npy", np.float32(1.0))
    np.save(root / "nosamples.npy", np.zeros((0, 1, 8, 8), np.float32))
    nan = rng.random((8, 1, 8, 8), dtype=np.float32)
    nan[3, 0, 2, 2] = np.nan
    np.save(root / "nan.npy", nan)
    np.savez(root / "ragged.npz", a=np.zeros((4, 1, 8, 8), np.float32), b=np.zeros((3, 1, 8, 8), np.float32))
    with zipfile.ZipFile(root / "noarrays.npz", "w"):
        pass
    _small_onnx(root / "cnn.onnx")  # a real file for bench's checks
    np.savez(root / "naninputs.npz", x=np.full((1, 1, 8, 8), np.nan, np.float32))
    _bomb(root / "bomb.npz", (360_000, 1, 8, 8))  # ~90 MB once decompressed, well under 1 MB on disk
