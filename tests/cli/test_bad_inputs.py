"""Table-driven bad input, as a hostile or careless user gives it: every case must exit with the right code and
one line naming the problem and the fix, print no traceback, leave no file behind (not even a hidden temporary)
and leave every input exactly as it was. Cases run in-process through ``mixq.cli.main``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli import hostile_files

Q = ["quantize", "--model", "nets:build", "--mode", "dynamic", "--example-shape", "1,1,8,8"]
S = ["quantize", "--model", "nets:build", "--mode", "static", "--calib", "calib.npy"]
A = ["autoquant", "--model", "nets:build", "--calib", "calib.npy", "--eval", "nets:score"]
RO = "/proc" if os.geteuid() == 0 else "readonly"  # root writes through permissions; /proc refuses even root

# name: (argv, expected exit code, text the one error line must contain)
CASES: dict[str, tuple[list[str], int, str]] = {
    # outputs that resolve to an input, whatever the suffix (class 3)
    "output is the weights file": (Q + ["--weights", "w.onnx", "--output", "w.onnx"], 2, "is also an input"),
    "output via ./ is the weights": (Q + ["--weights", "w.onnx", "--output", "./w.onnx"], 2, "is also an input"),
    "output symlink to the weights": (Q + ["--weights", "w.onnx", "--output", "link.onnx"], 2, "is also an input"),
    "output hard link of the weights": (Q + ["--weights", "w.onnx", "--output", "hard.onnx"], 2, "is also an input"),
    "weights are a symlink to the output": (Q + ["--weights", "link.onnx", "--output", "w.onnx"], 2,
                                            "is also an input"),
    "output symlink to the data": (S + ["--output", "calib_link.onnx"], 2, "is also an input"),
    "output symlink to the model source": (Q + ["--output", "nets_link.onnx"], 2, "is also an input"),
    "sidecar would replace the weights": (Q + ["--weights", "side.mixq.json", "--output", "side.onnx"], 2,
                                          "sidecar 'side.mixq.json' is also an input"),
    "report would replace the weights": (A + ["--weights", "rep.autoquant.json", "--output", "rep.onnx"], 2,
                                         "report 'rep.autoquant.json' is also an input"),
    "bench json is the model": (["bench", "garbage.onnx", "--json", "garbage.onnx"], 2, "does not end in .json"),
    # options that would not take effect (class 2)
    "observer in dynamic mode": (Q + ["--observer", "mse", "--output", "a.onnx"], 2, "observer='mse' has no effect"),
    "observer in fp16 mode": (Q[:4] + ["fp16"] + Q[5:] + ["--observer", "percentile", "--output", "a.onnx"], 2,
                              "has no effect in fp16 mode"),
    "bits in fp16 mode": (Q[:4] + ["fp16"] + Q[5:] + ["--bits", "4", "--output", "a.onnx"], 2,
                          "bits=4 has no effect in fp16 mode"),
    "group size in fp16 mode": (Q[:4] + ["fp16"] + Q[5:] + ["--group-size", "32", "--output", "a.onnx"], 2,
                                "group_size=32 has no effect"),
    "group size in dynamic mode": (Q + ["--group-size", "32", "--output", "a.onnx"], 2,
                                   "group_size=32 has no effect in dynamic mode"),
    "group size in static mode": (S + ["--group-size", "32", "--output", "a.onnx"], 2,
                                  "group_size=32 has no effect in static mode"),
    "max calib batches in dynamic mode": (Q + ["--calib", "calib.npy", "--max-calib-batches", "2", "--output",
                                               "a.onnx"], 2, "max_calib_batches has no effect in dynamic mode"),
    "exclude naming no layer": (Q + ["--exclude", "conv,head", "--output", "a.onnx"], 2,
                                "exclude pattern 'head' matches no layer"),
    "weight-only 5 bits": (Q[:4] + ["weight_only"] + Q[5:] + ["--bits", "5", "--output", "a.onnx"], 2,
                           "2-, 4- or 8-bit weights"),
    "group size not a power of two": (Q[:4] + ["weight_only"] + Q[5:] + ["--bits", "4", "--group-size", "24",
                                                                           "--output", "a.onnx"], 2, "power of two"),
    "group size too small": (Q[:4] + ["weight_only"] + Q[5:] + ["--bits", "4", "--group-size", "8", "--output",
                                                                  "a.onnx"], 2, "power of two >= 16"),
    "nine bits": (S + ["--bits", "9", "--output", "a.onnx"], 2, "bits must be between 2 and 8"),
    "zero bits": (Q + ["--bits", "0", "--output", "a.onnx"], 2, "bits must be between 2 and 8"),
    "unknown observer": (S + ["--observer", "magic", "--output", "a.onnx"], 2, "invalid choice: 'magic'"),
    "unknown mode": (["quantize", "--model", "nets:build", "--mode", "int3", "--output", "a.onnx"], 2,
                     "invalid choice: 'int3'"),
    # data (classes 7 and 8)
    "object arrays in an npz": (S[:-1] + ["objects.npz", "--output", "a.onnx"], 2, "holds Python objects"),
    "string arrays": (S[:-1] + ["strings.npy", "--output", "a.onnx"], 2, "dtype <U1"),
    "complex arrays": (S[:-1] + ["complex.npy", "--output", "a.onnx"], 2, "dtype complex64"),
    "0-d array": (S[:-1] + ["scalar.npy", "--output", "a.onnx"], 2, "without a batch axis"),
    "no samples": (S[:-1] + ["nosamples.npy", "--output", "a.onnx"], 2, "gave no batches"),
    "not a NumPy file": (S[:-1] + ["garbage.npy", "--output", "a.onnx"], 2, "cannot read garbage.npy"),
    "npz without arrays": (S[:-1] + ["noarrays.npz", "--output", "a.onnx"], 2, "holds no input arrays"),
    "npz arrays of different lengths": (S[:-1] + ["ragged.npz", "--output", "a.onnx"], 2, "different lengths"),
    "NaN in the data": (S[:-1] + ["nan.npy", "--output", "a.onnx"], 2, "contains NaN or inf"),
    "data of another suffix": (S[:-1] + ["notes.txt", "--output", "a.onnx"], 2, "neither a .npy/.npz"),
    "data is a directory": (S[:-1] + ["dir.onnx", "--output", "a.onnx"], 2, "is neither a .npy"),
    "negative max calib batches": (S + ["--max-calib-batches", "-1", "--output", "a.onnx"], 2,
                                   "--max-calib-batches must be >= 1"),
    "zero max calib batches": (S + ["--max-calib-batches", "0", "--output", "a.onnx"], 2,
                               "--max-calib-batches must be >= 1"),
    "zero batch size": (S + ["--batch-size", "0", "--output", "a.onnx"], 2, "--batch-size must be >= 1"),
    "calibration callable yields strings": (S[:-1] + ["hostile:strings", "--output", "a.onnx"], 2,
                                            "calibration batch 0 is a str"),
    "calibration batch holds a string": (S[:-1] + ["hostile:tuple_of_str", "--output", "a.onnx"], 2,
                                         "holds a str"),
    "calibration batch is empty": (S[:-1] + ["hostile:empty", "--output", "a.onnx"], 2, "is empty (0 samples)"),
    "calibration callable raises": (S[:-1] + ["hostile:raises", "--output", "a.onnx"], 2, "OSError: disk on fire"),
    "calibration callable exits": (S[:-1] + ["hostile:exits", "--output", "a.onnx"], 2, "called sys.exit(0)"),
    "calibration callable returns None": (S[:-1] + ["hostile:nothing", "--output", "a.onnx"], 2,
                                          "did not give an iterable"),
    "calibration callable missing": (S[:-1] + ["hostile:nope", "--output", "a.onnx"], 2, "cannot load"),
    "example shape not numbers": (Q[:-1] + ["1,x", "--output", "a.onnx"], 2, "not a list of positive integers"),
    "example shape with a zero": (Q[:-1] + ["0,1,8,8", "--output", "a.onnx"], 2, "not a list of positive"),
    "example shape absurdly large": (Q[:-1] + ["1,1,100000,100000000", "--output", "a.onnx"], 2, "GiB"),
    "example shape the model rejects": (Q[:-1] + ["1,1,9,9", "--output", "a.onnx"], 2, "the model rejects inputs"),
    # the model and its weights
    "factory exits": (["quantize", "--model", "hostile:exiting_factory", "--mode", "dynamic", "--output",
                       "a.onnx"], 2, "called sys.exit(3)"),
    "factory returns no model": (["quantize", "--model", "hostile:not_a_model", "--mode", "dynamic", "--output",
                                  "a.onnx"], 2, "returned a int, not a torch.nn.Module"),
    "model file missing": (["quantize", "--model", "nope.py:build", "--mode", "dynamic", "--output", "a.onnx"], 2,
                           "'nope.py' does not exist"),
    "model without module": (["quantize", "--model", ":build", "--mode", "dynamic", "--output", "a.onnx"], 2,
                             "not of the form MODULE:FACTORY"),
    "model without factory": (["quantize", "--model", "nets:", "--mode", "dynamic", "--output", "a.onnx"], 2,
                              "not of the form MODULE:FACTORY"),
    "weights empty": (Q + ["--weights", "empty.pt", "--output", "a.onnx"], 2, "empty.pt"),
    "weights garbage": (Q + ["--weights", "garbage.pt", "--output", "a.onnx"], 2, "garbage.pt"),
    "weights a directory": (Q + ["--weights", "dir.onnx", "--output", "a.onnx"], 2, "is a directory"),
    # where the output goes
    "output directory not writable": (Q + ["--output", f"{RO}/a.onnx"], 2, "cannot write --output into"),
    "output is a directory": (Q + ["--output", "dir.onnx"], 2, "is a directory"),
    "output upper-case suffix": (Q + ["--output", "a.ONNX"], 2, "does not end in .onnx"),
    "output without suffix": (Q + ["--output", "model"], 2, "does not end in .onnx"),
    "output in a missing directory": (Q + ["--output", "no/such/a.onnx"], 2, "mkdir -p no/such"),
    # autoquant's user metric
    "eval exits": (A[:-1] + ["hostile:exiting_score", "--output", "a.onnx"], 2, "called sys.exit(0)"),
    "eval returns NaN": (A[:-1] + ["hostile:nan_score", "--output", "a.onnx"], 2, "finite float"),
    "eval missing": (A[:-1] + ["nets:nope", "--output", "a.onnx"], 2, "cannot load nets:nope"),
    "eval not MODULE:FN": (A[:-1] + ["score", "--output", "a.onnx"], 2, "is not MODULE:FUNCTION"),
    "autoquant without data": (["autoquant", "--model", "nets:build", "--eval", "nets:score", "--output",
                                "a.onnx"], 2, "needs calibration data"),
    # bench and inspect
    "bench garbage file": (["bench", "garbage.onnx"], 2, "ONNX Runtime cannot load garbage.onnx"),
    "bench zero runs": (["bench", "garbage.onnx", "--runs", "0"], 2, "--runs and --threads must be >= 1"),
    "bench json unwritable": (["bench", "garbage.onnx", "--json", f"{RO}/b.json"], 2, "cannot write --json"),
    "inspect missing file": (["inspect", "nope.onnx"], 2, "does not exist"),
    "inspect a directory": (["inspect", "dir.onnx"], 2, "is a directory"),
    "inspect garbage": (["inspect", "garbage.onnx"], 2, "cannot load garbage.onnx"),
    "demo out is a file": (["demo", "--out", "nets.py"], 2, "is a file"),
    # issue 23: non-finite weights, options LiteRT cannot take, sizes past memory, bench values the graph refuses
    "inf weight from the factory": (["quantize", "--model", "hostile:inf_weights", "--mode", "dynamic",
                                     "--example-shape", "1,4", "--output", "a.onnx"], 2,
                                    "parameter '2.weight' (2, 8) holds 1 inf value"),
    "NaN BatchNorm statistics": (["quantize", "--model", "hostile:nan_statistics", "--mode", "fp16",
                                  "--example-shape", "1,1,8,8", "--output", "a.onnx"], 2,
                                 "buffer '1.running_var' (4,) holds 1 NaN value"),
    "tflite int8 io without static": (Q + ["--io-dtype", "int8", "--output", "a.tflite"], 2,
                                      "--io-dtype int8 needs a full-integer LiteRT file"),
    "tflite weight only asym": (Q[:4] + ["weight_only", "--bits", "4", "--weight-scheme", "asym"] + Q[5:]
                                + ["--output", "a.tflite"], 2, "LiteRT's integer weights have no zero points"),
    "tflite weight only group 16": (Q[:4] + ["weight_only", "--bits", "4", "--group-size", "16"] + Q[5:]
                                    + ["--output", "a.tflite"], 2, "not --group-size 16"),
    "bench batch past memory": (["bench", "cnn.onnx", "--batch", "100000000000"], 2, "TiB of memory, more than"),
    "bench shape past memory": (["bench", "cnn.onnx", "--shape", "x=1000000000000x1x8x8"], 2,
                                "TiB of memory, more than"),
    "bench NaN inputs": (["bench", "cnn.onnx", "--inputs", "naninputs.npz"], 2, "'x' holds NaN or inf values"),
}


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry (hidden ones too, one level of subdirectories) with its type, size, mtime and inode."""
    entries = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(base, name))
            entries[os.path.relpath(os.path.join(base, name), root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                                        st.st_ino)
    return entries


@pytest.fixture(scope="module")
def hostile_dir(user_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    hostile_files.build(root, user_dir)
    if RO == "readonly":
        (root / "readonly").mkdir(mode=0o555)
    return root


def test_the_table_has_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("args,code,message", list(CASES.values()), ids=list(CASES))
def test_bad_input(mixq_main, hostile_dir, capsys, args, code, message):
    before = _snapshot(hostile_dir)
    try:
        got, _, err = mixq_main(*args, cwd=hostile_dir)
    except SystemExit as exc:  # argparse's own usage errors (an unknown choice)
        got, err = exc.code, capsys.readouterr().err
    after = _snapshot(hostile_dir)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("mixq: warning", "usage:", "  "))]
    assert got == code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert message in lines[0], err
    assert after == before, "a file was left behind or an input changed"
