"""Issue 23 on the Hugging Face surfaces, as a new user meets them: NaN/inf weights, an --hf-task the directory was
not saved as, sizes past memory, bench values the graph cannot take, and a full disk. Each bad input exits 2 with
one line before any work; a full disk exits 1 saying so and keeps the existing file."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

from tests.cli.one_line import assert_one_line_error

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def bert_inf(hf_dirs):
    """bert/ with one inf in an encoder weight."""
    import torch

    target = hf_dirs / "bert_inf"
    if not target.exists():
        shutil.copytree(hf_dirs / "bert", target)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(target)
        with torch.no_grad():
            model.bert.encoder.layer[1].output.dense.weight[3, 5] = float("inf")
        model.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def bert_onnx(hf_dirs):
    """bert/ exported float to ONNX (inputs input_ids, attention_mask, token_type_ids; 64 positions)."""
    import torch

    import mixq

    path = hf_dirs / "bert_guard.onnx"
    if not path.exists():
        model = transformers.AutoModel.from_pretrained(hf_dirs / "bert").eval()
        ids = torch.randint(0, 50, (1, 8))
        mixq.export_onnx(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, path)
    return path


def test_an_inf_weight_is_refused_before_any_work(mixq_main, bert_inf):
    assert_one_line_error(mixq_main, bert_inf.parent, ["quantize", "--hf", "bert_inf", "--hf-task",
                                                       "sequence-classification", "--mode", "dynamic",
                                                       "--output", "bad.onnx"],
                          "'bert.encoder.layer.1.output.dense.weight' (32, 64) holds 1 inf value")


@pytest.mark.parametrize("task,saved", [("token-classification", "BertForSequenceClassification"),
                                        ("causal-lm", "BertForSequenceClassification")])
def test_a_task_the_directory_was_not_saved_as_is_refused(mixq_main, hf_dirs, task, saved):
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "bert", "--hf-task", task, "--mode", "dynamic",
                                               "--output", "bad.onnx"],
                          f"--hf-task {task} does not match 'bert': config.json says it was saved as {saved}")


def test_llama_as_masked_lm_is_refused(mixq_main, hf_dirs):
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "llama", "--hf-task", "masked-lm", "--mode",
                                               "dynamic", "--output", "bad.onnx"], "pass --hf-task causal-lm")


def test_an_example_shape_past_memory_is_refused(mixq_main, hf_dirs):
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "bert", "--mode", "dynamic", "--example-shape",
                                               "1000000000,16", "--output", "bad.onnx"], "TiB of memory, more than")


def test_a_dynamic_range_decoder_to_tflite_is_refused_before_loading(mixq_main, hf_dirs):
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "llama", "--hf-task", "causal-lm", "--mode",
                                               "dynamic", "--output", "bad.tflite"], "not --mode dynamic",
                          output="bad.tflite")


def test_a_hugging_face_encoder_writes_a_dynamic_range_tflite_with_named_inputs(mixq_main, hf_dirs):
    from mixq.export.tflite import inspect_tflite, litert_available

    if not litert_available():
        pytest.skip("LiteRT extra not installed")
    code, _, err = mixq_main("quantize", "--hf", "bert", "--mode", "dynamic", "--output", "bert.tflite", cwd=hf_dirs)
    assert code == 0, err
    info = inspect_tflite(hf_dirs / "bert.tflite")
    names = " ".join(info.inputs)
    assert "input_ids" in names and "attention_mask" in names, names


def test_a_hugging_face_encoder_writes_a_full_integer_tflite(mixq_main, hf_dirs):
    from mixq.export.tflite import inspect_tflite, litert_available

    if not litert_available():
        pytest.skip("LiteRT extra not installed")
    code, out, err = mixq_main("quantize", "--hf", "bert", "--mode", "static", "--calib-text", "texts.txt",
                               "--format", "tflite", "--output", "bert_int8.tflite", cwd=hf_dirs)
    assert code == 0, err
    fcs = [op for op in inspect_tflite(hf_dirs / "bert_int8.tflite").ops if op.op_type == "FULLY_CONNECTED"]
    assert fcs and all(op.input_types[1] == "int8" for op in fcs), fcs  # int8 weights: integer or hybrid kernels
    assert any(op.input_types[:2] == ("int8", "int8") for op in fcs), fcs  # query/key/value: int8 in and out


@pytest.mark.parametrize("arrays,message", [
    ({"input_ids": np.full((1, 8), 10_000)}, "'input_ids' holds id 10000, but the table it indexes has"),
    ({"input_ids": np.full((1, 8), -2)}, "'input_ids' holds negative values"),
    ({"input_ids": np.full((1, 8), 3), "attention_mask": np.ones((1, 6))}, "the same sequence axis"),
    ({"input_ids": np.full((1, 100), 3), "attention_mask": np.ones((1, 100))}, "position table has 64 rows"),
    ({"input_ids": np.full((1, 8), 3), "attention_mask": np.full((1, 8), 2)}, "outside 0/1"),
], ids=["id past the vocabulary", "negative id", "mask of another length", "past the positions", "mask not 0/1"])
def test_bench_inputs_the_graph_cannot_take_are_refused(mixq_main, hf_dirs, bert_onnx, arrays, message):
    full = {"input_ids": np.full((1, 8), 3), "attention_mask": np.ones((1, 8))}
    full.update(arrays)
    np.savez(hf_dirs / "guard_inputs.npz", **{k: v.astype(np.int64) for k, v in full.items()})
    assert_one_line_error(mixq_main, hf_dirs, ["bench", bert_onnx.name, "--inputs", "guard_inputs.npz", "--runs", "1"],
                          message)


def test_bench_shapes_past_the_positions_are_refused(mixq_main, hf_dirs, bert_onnx):
    assert_one_line_error(mixq_main, hf_dirs, ["bench", bert_onnx.name, "--shape", "input_ids=1x80", "--runs", "1"],
                          "position table has 64 rows")


def test_a_full_disk_is_a_failure_that_keeps_the_old_file(mixq_main, user_dir, monkeypatch):
    import onnx

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    (user_dir / "kept.onnx").write_text("the old file")
    monkeypatch.setattr(onnx, "save", full)
    code, _, err = mixq_main("quantize", "--model", "nets:build", "--mode", "dynamic", "--example-shape", "1,1,8,8",
                             "--output", "kept.onnx", cwd=user_dir)
    lines = [ln for ln in err.splitlines() if ln.startswith("mixq ")]
    assert code == 1 and len(lines) == 1 and "no space left on the device" in lines[0], err
    assert "--example-shape" not in lines[0] and "Traceback" not in err
    assert (user_dir / "kept.onnx").read_text() == "the old file"
    assert not (user_dir / "kept.mixq.json").exists()
    assert not [p for p in user_dir.iterdir() if p.name.startswith(".")]


def test_a_causal_lm_task_without_a_cache_is_refused_before_quantizing(mixq_main, hf_dirs):
    target = hf_dirs / "bert_lmhead"
    if not target.exists():
        config = transformers.AutoConfig.from_pretrained(hf_dirs / "bert")
        transformers.BertLMHeadModel(config).save_pretrained(target)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(hf_dirs / "bert" / name, target / name)
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "bert_lmhead", "--hf-task", "causal-lm", "--mode",
                                               "weight_only", "--bits", "4", "--group-size", "16", "--output",
                                               "bad.onnx"], "is not a causal LM that returns a key/value cache")


@pytest.mark.parametrize("flag", [["--io-dtype", "int8"], ["--nhwc"]], ids=["integer io", "nhwc"])
def test_tflite_image_options_with_hf_are_refused_before_loading(mixq_main, hf_dirs, flag):
    assert_one_line_error(mixq_main, hf_dirs, ["quantize", "--hf", "bert", "--mode", "static", "--calib-text",
                                               "texts.txt", *flag, "--output", "bad.tflite"],
                          f"{flag[0]}", output="bad.tflite")
