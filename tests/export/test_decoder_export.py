"""A key/value-cache decoder in ONNX Runtime: greedy generation equals the PyTorch quantized model, token by token."""

from __future__ import annotations

import onnx
import pytest
import torch

import mixq

transformers = pytest.importorskip("transformers")


def _tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return transformers.LlamaForCausalLM(config).eval()


def test_llama_int4_decoder_generates_the_same_tokens_in_onnx_runtime(tmp_path):
    lm = _tiny_llama()
    calib = [torch.randint(0, 96, (2, 24)) for _ in range(3)]
    qlm = mixq.quantize(lm, "weight_only", bits=4, group_size=32, method="gptq", calib_data=calib, progress=False)
    path = mixq.export_decoder_onnx(qlm, tmp_path / "decoder.onnx")
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 15  # 7 per block + lm_head
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["input_ids"] == ["batch", "sequence"] and dims["past.0.key"] == ["batch", 2, "past_sequence", 16]
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    prompt = torch.randint(0, 96, (2, 7))
    expected = mixq.generate_torch(qlm, prompt, max_new_tokens=12)
    assert torch.equal(mixq.generate_onnx(path, prompt, max_new_tokens=12), expected)
    with torch.no_grad():  # the cache loop is Hugging Face's own greedy search
        hf = qlm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False, pad_token_id=95)
    assert torch.equal(hf, expected)


def test_gpt2_decoder_generates_the_same_tokens_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    lm = transformers.GPT2LMHeadModel(config).eval()
    qlm = mixq.quantize(lm, "weight_only", bits=4, group_size=32, progress=False)
    assert qlm.mixq_summary.quantized
    path = mixq.export_decoder_onnx(qlm, tmp_path / "gpt2.onnx")
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node)
    prompt = torch.randint(0, 96, (1, 5))
    expected = mixq.generate_torch(qlm, prompt, max_new_tokens=10)
    assert torch.equal(mixq.generate_onnx(path, prompt, max_new_tokens=10), expected)


def test_a_model_without_a_decoder_config_is_refused(tmp_path):
    with pytest.raises(TypeError, match="pass a Hugging Face causal LM"):
        mixq.export_decoder_onnx(torch.nn.Linear(4, 4), tmp_path / "x.onnx")
