"""All-or-nothing outputs: staged multi-file writes, a failure after the first file, a closed stdout pipe, and
input data read lazily (a small file that expands to a lot of memory)."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from mixq.cli import arrays, main
from mixq.report.files import StagedOutputs, atomic_write_text
from tests.cli.hostile_files import _bomb

Q = ["quantize", "--model", "nets:build", "--mode", "dynamic", "--example-shape", "1,1,8,8", "--output", "q.onnx"]


def test_staged_outputs_replace_all_targets_or_none(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old a")
    with StagedOutputs(tmp_path) as stage:
        stage.path("a.txt").write_text("new a")
        stage.path("b.txt").write_text("new b")
        assert sorted(os.listdir(tmp_path))[1:] == ["a.txt"]  # nothing visible before the block ends
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").read_text() == "new b"
    with pytest.raises(RuntimeError), StagedOutputs(tmp_path) as stage:
        stage.path("a.txt").write_text("newer a")
        stage.path("c.txt").write_text("c")
        raise RuntimeError("the second output failed")
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"] and (tmp_path / "a.txt").read_text() == "new a"


def test_a_failed_commit_restores_the_targets_already_replaced(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old a")
    atomic_write_text(tmp_path / "b.txt", "old b")
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.txt") and ".mixq-stage-" in str(src):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"), StagedOutputs(tmp_path) as stage:
        stage.path("a.txt").write_text("new a")
        stage.path("b.txt").write_text("new b")
    assert (tmp_path / "a.txt").read_text() == "old a" and (tmp_path / "b.txt").read_text() == "old b"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"]


def test_quantize_writes_no_onnx_file_when_the_sidecar_fails(user_dir, monkeypatch, capsys, tmp_path):
    for name in ("nets.py", "w.pt"):
        (tmp_path / name).symlink_to(user_dir / name)
    monkeypatch.chdir(tmp_path)

    def broken_sidecar(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mixq.cli.quantize.write_sidecar", broken_sidecar)
    assert main(Q) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["nets.py", "w.pt"]


class _ClosedPipe:
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise OSError("no descriptor")

    def isatty(self):
        return False


def test_a_closed_stdout_pipe_does_not_stop_the_command(user_dir, monkeypatch, capsys, tmp_path):
    for name in ("nets.py", "w.pt"):
        (tmp_path / name).symlink_to(user_dir / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdout", _ClosedPipe())  # `mixq quantize ... | head -0`
    assert main(Q) == 0
    assert (tmp_path / "q.onnx").stat().st_size > 0 and (tmp_path / "q.mixq.json").exists()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    _bomb(path, (100_000, 1, 8, 8))  # 25.6 MB decompressed
    return path


def test_only_the_rows_needed_are_read(bomb):
    tracemalloc.start()
    try:
        (x,) = arrays.read_arrays(bomb, rows=64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (64, 1, 8, 8)
    assert peak < 2 << 20, f"reading 64 rows took {peak / 2**20:.1f} MB"


def test_absurd_sizes_are_refused_before_reading(bomb, monkeypatch):
    monkeypatch.setattr(arrays, "MAX_BYTES", 8 << 20)
    with pytest.raises(arrays.CliError, match=r"would take 0.0 GiB in memory.*--max-calib-batches"):
        arrays.read_arrays(bomb)
    assert arrays.read_arrays(bomb, rows=32)[0].shape == (32, 1, 8, 8)


def test_npz_and_npy_read_the_same_arrays(tmp_path):
    import numpy as np

    a = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    f = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(4, 3))
    np.savez_compressed(tmp_path / "d.npz", a=a, f=f)
    np.save(tmp_path / "a.npy", a)
    got_a, got_f = arrays.read_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(got_a, a)
    np.testing.assert_array_equal(got_f, f)
    np.testing.assert_array_equal(arrays.read_arrays(tmp_path / "d.npz", rows=1)[1], f[:1])
    np.testing.assert_array_equal(arrays.read_arrays(tmp_path / "a.npy", rows=1)[0], a[:1])
