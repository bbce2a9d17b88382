"""Bad input as a new user would give it: one line naming the problem and the fix, exit code 2, no traceback.

The cases the issue names run in a subprocess, as a user would; the rest call ``mixq.cli.main`` in-process (the
same code path, without paying for an interpreter start-up each)."""

from __future__ import annotations

import pytest

from mixq.cli.errors import CliError

Q = ["quantize", "--model", "nets:build", "--mode", "dynamic", "--example-shape", "1,1,8,8"]

SUBPROCESS_CASES = {
    "missing file": (Q + ["--weights", "nope.pt", "--output", "a.onnx"], "--weights 'nope.pt' does not exist"),
    "factory does not import": (["quantize", "--model", "nosuchpkg.nets:build", "--mode", "dynamic",
                                 "--output", "a.onnx"], "cannot import 'nosuchpkg.nets'"),
    "weights do not match": (["quantize", "--model", "nets:build_wide", "--weights", "w.pt", "--mode", "dynamic",
                              "--example-shape", "1,1,8,8", "--output", "a.onnx"],
                             "do not match the model from nets:build_wide"),
    "data of the wrong shape": (["quantize", "--model", "nets:build", "--mode", "static", "--calib", "bad.npy",
                                 "--output", "a.onnx"], "the model rejects inputs shaped Tensor(1, 1, 6, 6)"),
    "output in a missing directory": (Q + ["--output", "no/such/dir/a.onnx"], "mkdir -p no/such/dir"),
}

IN_PROCESS_CASES = {
    "factory name missing": (["quantize", "--model", "nets:nope", "--mode", "dynamic", "--output", "a.onnx"],
                             "'nets' has no attribute 'nope'"),
    "factory raises": (["quantize", "--model", "nets:broken", "--mode", "dynamic", "--output", "a.onnx"],
                       "factory failed on purpose"),
    "not MODULE:FACTORY": (["quantize", "--model", "nets", "--mode", "dynamic", "--output", "a.onnx"],
                           "is not of the form MODULE:FACTORY"),
    "pickled weights": (Q + ["--weights", "pickled.pt", "--output", "a.onnx"], "--trust-pickle"),
    "weights not a checkpoint": (Q + ["--weights", "calib.npy", "--output", "a.onnx"],
                                 "calib.npy is not a PyTorch checkpoint"),
    "data disagrees with example shape": (["quantize", "--model", "nets:build", "--mode", "static", "--calib",
                                           "calib.npy", "--example-shape", "1,1,6,6", "--output", "a.onnx"],
                                          "disagrees with the --calib data"),
    "missing data file": (["quantize", "--model", "nets:build", "--mode", "static", "--calib", "nope.npz",
                           "--output", "a.onnx"], "--calib 'nope.npz' does not exist"),
    "output is not .onnx": (Q + ["--output", "calib.npy"], "does not end in .onnx"),
    "static without calibration": (Q[:4] + ["static", "--output", "a.onnx"], "pass --calib DATA"),
    "unknown shape": (Q[:5] + ["--output", "a.onnx"], "pass --example-shape"),
    "bad option value": (Q + ["--mode", "weight_only", "--bits", "5", "--output", "a.onnx"], "2-, 4- or 8-bit"),
    "gptq without calibration": (Q[:4] + ["weight_only", "--bits", "4", "--method", "gptq", "--example-shape",
                                          "1,1,8,8", "--output", "a.onnx"], "--method gptq needs calibration data"),
    "method outside weight_only": (Q + ["--method", "awq", "--output", "a.onnx"], "use mode='weight_only'"),
    "bench missing file": (["bench", "nope.onnx"], "model 'nope.onnx' does not exist"),
    "bench not onnx": (["bench", "nets.py"], "ONNX Runtime cannot load nets.py"),
    "bench bad batch list": (["bench", "nets.py", "--batch", "1,x"], "--batch '1,x' is not a list"),
    "bench json in a missing directory": (["bench", "nets.py", "--json", "no/b.json"], "does not exist"),
    "inspect not onnx": (["inspect", "w.pt"], "cannot load w.pt as an ONNX model"),
    "demo out in a missing directory": (["demo", "--out", "no/such/report"], "create it first"),
}


def _snapshot(root):
    return {p.name: p.stat().st_mtime_ns for p in root.iterdir()}


def _check(code, err, command, message, before, after):
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("mixq: warning")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"mixq {command}: error: "), err
    assert message in lines[0] and "; " in lines[0]  # "problem; fix"
    assert "Traceback" not in err
    assert after == before  # inputs untouched, nothing (half-)written


@pytest.mark.parametrize("args,message", list(SUBPROCESS_CASES.values()), ids=list(SUBPROCESS_CASES))
def test_bad_input_subprocess(mixq_cli, user_dir, args, message):
    before = _snapshot(user_dir)
    proc = mixq_cli(*args, cwd=user_dir)
    _check(proc.returncode, proc.stderr, args[0], message, before, _snapshot(user_dir))


@pytest.mark.parametrize("args,message", list(IN_PROCESS_CASES.values()), ids=list(IN_PROCESS_CASES))
def test_bad_input_in_process(mixq_main, user_dir, args, message):
    before = _snapshot(user_dir)
    code, _, err = mixq_main(*args, cwd=user_dir)
    _check(code, err, args[0], message, before, _snapshot(user_dir))


def test_debug_raises_with_the_traceback(mixq_main, user_dir):
    with pytest.raises(CliError, match="has no attribute 'nope'"):
        mixq_main("--debug", "quantize", "--model", "nets:nope", "--mode", "dynamic", "--output", "a.onnx",
                  cwd=user_dir)
    with pytest.raises(CliError):  # also accepted after the subcommand
        mixq_main("quantize", "--model", "nets:nope", "--mode", "dynamic", "--output", "a.onnx", "--debug",
                  cwd=user_dir)


def test_trust_pickle_warns_and_loads(mixq_main, user_dir):
    code, out, err = mixq_main(*Q, "--weights", "pickled.pt", "--trust-pickle", "--output", "trusted.onnx",
                               cwd=user_dir)
    assert code == 0, err
    assert "mixq: warning: --trust-pickle" in err and (user_dir / "trusted.onnx").exists()
