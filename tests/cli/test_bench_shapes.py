"""``mixq bench`` feeds every file the same shapes (``--shape``, ``--inputs``, or batch plus the files' fixed sizes),
with token ids every file's vocabulary holds, and refuses files that take other inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.report.token_graphs import token_model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    token_model(root / "big.onnx", vocab=300)
    token_model(root / "small_int8.onnx", vocab=20, quantized_table=True)  # ids >= 20 make ORT's Gather fail
    token_model(root / "seq16.onnx", vocab=300, seq=16)
    token_model(root / "ids_only.onnx", mask_name=None)
    token_model(root / "renamed.onnx", ids_name="tokens")
    np.savez(root / "tokens.npz", input_ids=np.full((3, 40), 7), attention_mask=np.ones((3, 40), dtype=np.int64))
    np.savez(root / "float_ids.npz", input_ids=np.zeros((3, 40)), attention_mask=np.ones((3, 40), dtype=np.int64))
    np.savez(root / "other_names.npz", ids=np.zeros((3, 40), dtype=np.int64))
    return root


def test_shape_of_one_input_sizes_the_others_and_ids_fit_every_vocabulary(mixq_main, graphs):
    code, out, err = mixq_main("bench", "big.onnx", "small_int8.onnx", "--shape", "input_ids=2x300", "--runs", "3",
                               "--json", "b.json", cwd=graphs)
    assert code == 0, err
    assert "| big.onnx |" in out and "| small_int8.onnx |" in out and "n/a" not in out
    assert "inputs: 2x300: input_ids=2x300, attention_mask=2x300" in out
    data = json.loads((graphs / "b.json").read_text())
    assert data["shapes"] == {"2x300": {"input_ids": [2, 300], "attention_mask": [2, 300]}}
    assert all(r["latency"]["2x300"]["runs"] == 3 for r in data["results"])


def test_batches_take_the_sequence_length_a_file_fixes(mixq_main, graphs):
    code, out, err = mixq_main("bench", "big.onnx", "seq16.onnx", "--batch", "1,4", "--runs", "2", cwd=graphs)
    assert code == 0, err
    assert "inputs: b1: input_ids=1x16, attention_mask=1x16; b4: input_ids=4x16, attention_mask=4x16" in out
    assert "n/a" not in out


def test_a_file_that_cannot_take_the_shape_says_why(mixq_main, graphs):
    code, out, err = mixq_main("bench", "big.onnx", "seq16.onnx", "--shape", "input_ids=1x32", "--runs", "2",
                               cwd=graphs)
    assert code == 0, err
    assert "note: seq16.onnx 1x32: input 'input_ids' has axis 1 fixed at 16, not 32" in out


def test_given_arrays_are_what_every_file_gets(mixq_main, graphs):
    code, out, err = mixq_main("bench", "big.onnx", "small_int8.onnx", "--inputs", "tokens.npz", "--runs", "2",
                               cwd=graphs)
    assert code == 0, err
    assert "inputs: 3x40: input_ids=3x40, attention_mask=3x40" in out


@pytest.mark.parametrize("args,message", [
    (["big.onnx", "ids_only.onnx", "--shape", "input_ids=1x8"], "takes inputs ['attention_mask', 'input_ids'] but "
                                                                 "ids_only.onnx takes ['input_ids']"),
    (["big.onnx", "renamed.onnx"], "renamed.onnx takes ['attention_mask', 'tokens']"),
    (["big.onnx"], "axis 1 of input 'input_ids' is symbolic ('sequence') and nothing sets its size; give it with "
                   "--shape input_ids=1x128"),
    (["big.onnx", "--shape", "input_ids=2x8", "--batch", "2"], "--batch cannot be combined with --shape"),
    (["big.onnx", "--shape", "input_ids=2by8"], "--shape 'input_ids=2by8' is not NAME=DIMS"),
    (["big.onnx", "--shape", "mask=2x8"], "--shape names 'mask', which is not an input"),
    (["big.onnx", "--inputs", "other_names.npz"], "holds arrays ['ids'], but the models take inputs"),
    (["big.onnx", "--inputs", "float_ids.npz"], "'input_ids' holds float64 values, but the models take int64"),
], ids=["other names", "renamed input", "unsized sequence", "batch and shape", "bad shape", "unknown name",
        "npz names", "npz float ids"])
def test_refusals_are_one_line(mixq_main, graphs, args, message):
    code, out, err = mixq_main("bench", *args, cwd=graphs)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
