"""SIGINT and SIGTERM in the middle of an export: the command says so in one line, exits 130 / 143, and leaves
the directory as it was (the previous output untouched, no hidden temporary or staging files)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

# --runtime-aware off: no kernel timing, whose warning on a busy machine would be a second stderr line
ARGS = ["quantize", "--model", "nets:build", "--weights", "w.pt", "--mode", "static", "--calib", "calib.npy",
        "--output", "sig.onnx", "--runtime-aware", "off"]


@contextlib.contextmanager
def _signals_not_ignored() -> Iterator[None]:
    """The command starts as from a terminal: a test suite launched as a background job inherits SIGINT ignored
    (POSIX), which a child inherits too, and the command would then rightly ignore the signal this test sends."""
    ignored = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is signal.SIG_IGN]
    for sig in ignored:
        signal.signal(sig, signal.SIG_DFL)
    try:
        yield
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_mid_export_leaves_everything_as_it_was(user_dir, tmp_path, sig, code, word):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("nets.py", "w.pt", "calib.npy"):
        (work / name).symlink_to(user_dir / name)
    (work / "sig.onnx").write_bytes(b"previous export")
    (work / "sig.mixq.json").write_text("{}")
    before = sorted(os.listdir(work))
    with _signals_not_ignored():
        proc = subprocess.Popen([sys.executable, "-m", "mixq", *ARGS], cwd=work, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if any(n.startswith(".mixq-stage-") for n in os.listdir(work)):  # quantized; export_onnx is starting
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the command ended before the export started: " + proc.stderr.read()[-2000:]
    time.sleep(0.3)  # well inside the export (its staging directory lives about 4 s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]
    assert proc.returncode == code, err
    assert lines == [f"mixq quantize: {word}" + ("" if sig == signal.SIGINT else " (SIGTERM)") +
                     "; no output was written"], err
    assert sorted(os.listdir(work)) == before, "a temporary or staging file was left behind"
    assert (work / "sig.onnx").read_bytes() == b"previous export"
    assert (work / "sig.mixq.json").read_text() == "{}"
