"""``--hf DIR``: a saved Hugging Face model quantized from the command line, as its user would (no downloads)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mixq.export.onnx.decoder import decoder_feeds
from tests.cli.one_line import assert_one_line_error

transformers = pytest.importorskip("transformers")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _encode(tokenizer, texts, session):
    """Tokenizer output as the ONNX file takes it (padded to its sequence length when that is fixed)."""
    seq = session.get_inputs()[0].shape[1]
    padding = {"padding": "max_length", "max_length": seq} if isinstance(seq, int) else {"padding": True}
    encoded = tokenizer(texts, truncation=True, return_tensors="np", **padding)
    return {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}


def test_quantize_hf_dir_in_one_line(mixq_main, hf_dirs):
    code, out, err = mixq_main("quantize", "--hf", "bert", "--mode", "dynamic", "--output", "bert_dyn.onnx",
                               cwd=hf_dirs)
    assert code == 0, err
    assert "embeddings.word_embeddings" in out and "wrote bert_dyn.onnx" in out
    sidecar = json.loads((hf_dirs / "bert_dyn.mixq.json").read_text())
    assert (sidecar["hf"], sidecar["hf_task"], sidecar["model"]) == ("bert", "base", None)
    session = _session(hf_dirs / "bert_dyn.onnx")
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dirs / "bert", local_files_only=True)
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "pooler_output"]
    assert {i.name for i in session.get_inputs()} <= set(tokenizer.model_input_names) | {"input_ids"}

    feeds = _encode(tokenizer, ["the man came back", "she said it was good and very new"], session)
    hidden, _ = session.run(None, feeds)
    with torch.no_grad():
        model = transformers.AutoModel.from_pretrained(hf_dirs / "bert", local_files_only=True).eval()
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    mask = feeds["attention_mask"][..., None]
    pooled, pooled_ref = (hidden * mask).sum(1), (ref * mask).sum(1)
    cosine = (pooled * pooled_ref).sum(1) / np.linalg.norm(pooled, axis=1) / np.linalg.norm(pooled_ref, axis=1)
    assert cosine.min() >= 0.99, cosine

    np.savez(hf_dirs / "tokens.npz", **feeds)
    code, out, err = mixq_main("bench", "bert_dyn.onnx", "--inputs", "tokens.npz", "--runs", "2", cwd=hf_dirs)
    assert code == 0, err
    shape = "x".join(map(str, feeds["input_ids"].shape))
    assert "| bert_dyn.onnx |" in out and f"inputs: {shape}: input_ids={shape}, attention_mask={shape}" in out


def test_causal_lm_static_from_calibration_text(mixq_main, hf_dirs):
    code, out, err = mixq_main("quantize", "--hf", "llama", "--hf-task", "causal-lm", "--mode", "static",
                               "--calib-text", "texts.txt", "--batch-size", "4", "--max-length", "16", "--output",
                               "llama_int8.onnx", cwd=hf_dirs)
    assert code == 0, err
    assert "lm_head" in out and "static" in out and "key/value-cache decoder" in out
    sidecar = json.loads((hf_dirs / "llama_int8.mixq.json").read_text())
    assert sidecar["hf_task"] == "causal-lm" and sidecar["calib_text"] == "texts.txt"
    session = _session(hf_dirs / "llama_int8.onnx")
    assert [o.name for o in session.get_outputs()][:2] == ["logits", "present.0.key"]
    assert [i.name for i in session.get_inputs()][:3] == ["input_ids", "attention_mask", "past.0.key"], \
        "no token_type_ids for Llama"
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dirs / "llama", local_files_only=True)
    tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(["the man came back to the world", "what is this"], padding=True, return_tensors="np")
    feeds = decoder_feeds(session, encoded["input_ids"], encoded["attention_mask"])
    logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs / "llama", local_files_only=True).eval()
        ref = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()
    real = feeds["attention_mask"].astype(bool)
    agree = (logits.argmax(-1) == ref.argmax(-1))[real].mean()
    assert agree >= 0.9, agree


H = ["quantize", "--mode", "dynamic", "--output", "bad.onnx"]

ERRORS = {
    "hub id": (H + ["--hf", "some-org/some-model"], "--hf 'some-org/some-model' is not a local directory; mixq "
                                                    "never downloads models"),
    "a file": (H + ["--hf", "texts.txt"], "is a file, not a model directory"),
    "no config.json": (H + ["--hf", "noconfig"], "holds no config.json"),
    "no tokenizer": (H + ["--hf", "notok"], "needs the tokenizer, but 'notok' holds none"),
    "empty calibration text": (H + ["--hf", "bert", "--calib-text", "empty.txt"], "'empty.txt' holds no text"),
    "missing calibration text": (H + ["--hf", "bert", "--calib-text", "nope.txt"], "'nope.txt' does not exist"),
    "task without its weights": (H + ["--hf", "bert", "--hf-task", "masked-lm"],
                                 "config.json says it was saved as BertForSequenceClassification"),
    "task the architecture lacks": (H + ["--hf", "llama", "--hf-task", "masked-lm"],
                                    "--hf-task masked-lm does not match 'llama'"),
    "hf option without --hf": (H + ["--model", "nets:build", "--calib-text", "texts.txt"],
                               "--calib-text only apply to a Hugging Face model directory"),
    "max length without texts": (H + ["--hf", "bert", "--max-length", "16"], "no --calib-text is given"),
    "max length over the limit": (H + ["--hf", "bert", "--calib-text", "texts.txt", "--max-length", "65"],
                                  "outside what the model accepts (1..64)"),
    "image shape for a text model": (H + ["--hf", "bert", "--example-shape", "1,3,8,8"], "has 4 numbers"),
    "sequence over the limit": (H + ["--hf", "bert", "--example-shape", "1,100"], "more than the model's limit"),
    "float inputs into an embedding": (H + ["--model", "nets:embedder", "--example-shape", "1,8"],
                                       "has an nn.Embedding, which takes integer token ids"),
    "a model export rejects": (H + ["--model", "nets:branchy", "--example-shape", "2,4"],
                               "could not be exported to ONNX with inputs shaped Tensor(2, 4)"),
    "autoquant needs calibration": (["autoquant", "--hf", "bert", "--eval", "nets:bert_score", "--output",
                                     "bad.onnx"], "pass --calib DATA (or with --hf, --calib-text FILE"),
}


@pytest.mark.parametrize("args,message", list(ERRORS.values()), ids=list(ERRORS))
def test_bad_input_is_one_line(mixq_main, hf_dirs, args, message):
    assert_one_line_error(mixq_main, hf_dirs, args, message)


def test_token_inputs_from_texts_and_from_a_shape(hf_dirs):
    from mixq.cli import hf

    llama = hf.load_model(hf_dirs / "llama", "causal-lm")
    tokenizer = hf.load_tokenizer(hf_dirs / "llama", "a test")
    assert tokenizer.pad_token == tokenizer.eos_token, "no padding token: the end-of-text one pads"
    texts = hf.read_texts(str(hf_dirs / "texts.txt"))
    assert "" not in texts and len(texts) == 9
    batches = hf.text_batches(llama, tokenizer, texts, max_length=5, batch_size=4)
    assert [len(b["input_ids"]) for b in batches] == [4, 4, 1]
    assert all(set(b) == {"input_ids", "attention_mask"} and b["input_ids"].shape[1] <= 5 for b in batches)
    assert (batches[0]["attention_mask"] == 0).any(), "shorter texts are padded and masked"

    bert = hf.load_model(hf_dirs / "bert", "sequence-classification")
    example = hf.shaped_example(bert, [3, 16], None)
    assert set(example) == {"input_ids", "attention_mask"} and example["input_ids"].shape == (3, 16)
    assert example["input_ids"].dtype == torch.long and example["input_ids"].min() >= 0
    assert example["input_ids"].max() < bert.config.vocab_size and (example["attention_mask"] == 1).all()
    assert bert(**example).logits.shape == (3, 3)


def test_autoquant_takes_the_same_hf_options(mixq_main, hf_dirs):
    code, _, err = mixq_main("autoquant", "--hf", "bert", "--calib-text", "texts.txt", "--eval", "nets:broken_score",
                             "--output", "bad.onnx", cwd=hf_dirs)
    assert code == 2 and "--eval nets:broken_score failed" in err and "fp32 model" in err


def test_fp32_baseline_file_with_no_third_party_noise(mixq_cli, hf_dirs):
    """``--mode fp32`` writes the float model (the baseline to bench against); the run's stderr holds none of the
    import chatter of packages mixq loads (torchao's library loading, triton, torch's pytree deprecations)."""
    run = mixq_cli("quantize", "--hf", "bert", "--hf-task", "sequence-classification", "--mode", "fp32",
                   "--output", "bert_fp32.onnx", cwd=hf_dirs)
    assert run.returncode == 0, run.stderr
    assert "exported unquantized" in run.stdout
    noise = [line for line in run.stderr.splitlines()
             if any(word in line.lower() for word in ("torchao", "triton", "pytree", "_c_mxfp8"))]
    assert not noise, noise
    session = _session(hf_dirs / "bert_fp32.onnx")
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert not set(mixq_optimized(hf_dirs / "bert_fp32.onnx")) & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert json.loads((hf_dirs / "bert_fp32.mixq.json").read_text())["config"] == {"mode": "fp32"}


def test_fp32_refuses_quantization_options(mixq_main, hf_dirs):
    code, _, err = mixq_main("quantize", "--hf", "bert", "--mode", "fp32", "--bits", "4", "--output", "x.onnx",
                             cwd=hf_dirs)
    assert code != 0 and "--bits" in err and "unquantized" in err


def mixq_optimized(path):
    import mixq

    return mixq.optimized_op_types(path)
