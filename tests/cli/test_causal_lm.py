"""``mixq quantize --hf DIR --hf-task causal-lm``: a causal LM becomes a key/value-cache decoder ONNX Runtime
generates with (GPTQ int4 from calibration text here), and the summary, sidecar and ``mixq inspect`` say so."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mixq
from mixq.export.onnx.decoder import decoder_feeds
from tests.cli.one_line import assert_one_line_error

transformers = pytest.importorskip("transformers")
TEXTS = ["the man came back to the world", "what is this", "she said it was good"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gptq_int4_causal_lm_from_calibration_text_is_a_kv_cache_decoder(mixq_main, hf_dirs, arch):
    name = f"{arch}_w4.onnx"
    code, out, err = mixq_main("quantize", "--hf", arch, "--hf-task", "causal-lm", "--mode", "weight_only", "--bits",
                               "4", "--method", "gptq", "--calib-text", "texts.txt", "--batch-size", "4", "--output",
                               name, cwd=hf_dirs)
    assert code == 0, err
    assert "gptq" in out and f"{name}: key/value-cache decoder with 2 layers" in out
    sidecar = json.loads((hf_dirs / f"{arch}_w4.mixq.json").read_text())
    assert sidecar["config"]["method"]["name"] == "gptq" and sidecar["hf_task"] == "causal-lm"
    assert sidecar["decoder"]["layers"] == 2 and "present.1.value" in sidecar["decoder"]["outputs"]
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(hf_dirs / name)).graph.node)
    session = ort.InferenceSession(str(hf_dirs / name), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()][:4] == ["input_ids", "attention_mask", "past.0.key", "past.0.value"]

    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dirs / arch, local_files_only=True,
                                                           padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    (logits,) = session.run(["logits"], decoder_feeds(session, batch.input_ids.numpy(),
                                                      batch.attention_mask.numpy()))
    with torch.no_grad():
        ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs / arch, local_files_only=True).eval()(
            **batch).logits.numpy()
    real = batch.attention_mask.numpy().astype(bool)
    assert (logits.argmax(-1) == ref.argmax(-1))[real].mean() >= 0.7, "the int4 file follows the float model"
    together = mixq.generate_onnx(session, batch.input_ids, 6, attention_mask=batch.attention_mask)
    for row, text in enumerate(TEXTS):  # a left-padded batch generates what each text does alone
        alone = tokenizer(text, return_tensors="pt").input_ids
        assert torch.equal(together[row, -alone.shape[1] - 6:], mixq.generate_onnx(session, alone, 6)[0])

    code, out, err = mixq_main("inspect", name, "--json", f"{arch}_w4.inspect.json", cwd=hf_dirs)
    assert code == 0, err
    assert "key/value-cache decoder with 2 layers" in out and "MatMulNBits" in out
    info = json.loads((hf_dirs / f"{arch}_w4.inspect.json").read_text())
    assert info["decoder"]["head_dim"] == 16 and info["decoder"]["inputs"]["attention_mask"] == ["batch",
                                                                                                 "total_sequence"]


def test_other_onnx_files_are_not_called_decoders(mixq_main, quantized):
    code, out, err = mixq_main("inspect", quantized.name, "--json", "cnn.inspect.json", cwd=quantized.parent)
    assert code == 0, err
    assert "decoder" not in out and json.loads((quantized.parent / "cnn.inspect.json").read_text())["decoder"] is None


Q = ["quantize", "--hf-task", "causal-lm", "--mode", "weight_only", "--bits", "4", "--output", "bad.onnx"]
ERRORS = {
    "calibration text without a tokenizer": (Q + ["--hf", "gpt2notok", "--method", "gptq", "--calib-text",
                                                  "texts.txt"], "--calib-text needs the tokenizer, but 'gpt2notok' "
                                                                "holds none"),
    "gptq without calibration data": (Q + ["--hf", "gpt2", "--method", "gptq"],
                                      "--method gptq needs calibration data; pass --calib-text FILE"),
    "an empty calibration text": (Q + ["--hf", "gpt2", "--method", "awq", "--calib-text", "empty.txt"],
                                  "'empty.txt' holds no text"),
}


@pytest.mark.parametrize("args,message", list(ERRORS.values()), ids=list(ERRORS))
def test_bad_causal_lm_input_is_one_line(mixq_main, hf_dirs, args, message):
    assert_one_line_error(mixq_main, hf_dirs, args, message)


def test_decoder_feeds_fill_in_an_empty_cache_and_a_full_mask(hf_dirs, mixq_main):
    code, _, err = mixq_main("quantize", "--hf", "gpt2", "--hf-task", "causal-lm", "--mode", "fp16", "--output",
                             "gpt2_fp16.onnx", cwd=hf_dirs)
    assert code == 0, err
    session = ort.InferenceSession(str(hf_dirs / "gpt2_fp16.onnx"), providers=["CPUExecutionProvider"])
    feeds = decoder_feeds(session, np.zeros((2, 3), np.int64))
    assert feeds["attention_mask"].shape == (2, 3) and feeds["past.1.value"].shape == (2, 2, 0, 16)
    logits, *present = session.run(None, feeds)
    step = decoder_feeds(session, np.zeros((2, 1), np.int64), past=present)
    assert step["attention_mask"].shape == (2, 4) and session.run(None, step)[1].shape == (2, 2, 4, 16)


@pytest.mark.nightly
def test_int4_causal_lm_to_tflite_is_a_litert_kv_cache_decoder(mixq_main, hf_dirs):
    from mixq.export.tflite import inspect_tflite, litert_available

    if not litert_available():
        pytest.skip("LiteRT extra not installed")
    code, out, err = mixq_main("quantize", "--hf", "llama", "--hf-task", "causal-lm", "--mode", "weight_only",
                               "--bits", "4", "--output", "llama_w4.tflite", cwd=hf_dirs)
    assert code == 0, err
    assert "llama_w4.tflite: LiteRT key/value-cache decoder with 2 layers" in out
    sidecar = json.loads((hf_dirs / "llama_w4.mixq.json").read_text())
    assert sidecar["decoder"]["cache_len"] == 64 and sidecar["decoder"]["signatures"] == ["prefill", "decode"]
    assert sidecar["config"]["runtime"] == "litert"  # quantized to compute as LiteRT's kernels do
    assert "int4" in inspect_tflite(hf_dirs / "llama_w4.tflite").size_by_dtype
    tokens = mixq.generate_tflite(hf_dirs / "llama_w4.tflite", torch.tensor([[1, 5, 7]]), 4)
    assert tokens.shape == (1, 7)
