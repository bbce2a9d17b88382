"""A key/value-cache decoder in ONNX Runtime: greedy generation equals the PyTorch quantized model, token by token,
and a left-padded batch generates what each prompt does alone."""

from __future__ import annotations

import onnx
import pytest
import torch

import mixq

transformers = pytest.importorskip("transformers")
VOCAB = 96


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """A tiny random Llama (grouped-query attention), GPTQ w4 g32, and its decoder file."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    lm = transformers.LlamaForCausalLM(config).eval()
    calib = [torch.randint(0, VOCAB, (2, 24)) for _ in range(3)]
    qlm = mixq.quantize(lm, "weight_only", bits=4, group_size=32, method="gptq", calib_data=calib, progress=False)
    return qlm, mixq.export_decoder_onnx(qlm, tmp_path_factory.mktemp("llama") / "decoder.onnx")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    """A tiny random GPT-2 (Conv1D layers, learned positions), RTN w4 g32, and its decoder file."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    qlm = mixq.quantize(transformers.GPT2LMHeadModel(config).eval(), "weight_only", bits=4, group_size=32,
                        progress=False)
    assert qlm.mixq_summary.quantized
    return qlm, mixq.export_decoder_onnx(qlm, tmp_path_factory.mktemp("gpt2") / "gpt2.onnx")


def test_llama_int4_decoder_generates_the_same_tokens_in_onnx_runtime(llama):
    qlm, path = llama
    graph = onnx.load(str(path)).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 15  # 7 per block + lm_head
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["input_ids"] == ["batch", "sequence"] and dims["attention_mask"] == ["batch", "total_sequence"]
    assert dims["past.0.key"] == ["batch", 2, "past_sequence", 16]
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    prompt = torch.randint(0, VOCAB, (2, 7))
    expected = mixq.generate_torch(qlm, prompt, max_new_tokens=12)
    assert torch.equal(mixq.generate_onnx(path, prompt, max_new_tokens=12), expected)
    with torch.no_grad():  # the cache loop is Hugging Face's own greedy search
        hf = qlm.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, min_new_tokens=12,
                          do_sample=False, pad_token_id=VOCAB - 1)
    assert torch.equal(hf, expected)


def test_gpt2_decoder_generates_the_same_tokens_in_onnx_runtime(gpt2):
    qlm, path = gpt2
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(path)).graph.node)
    prompt = torch.randint(0, VOCAB, (1, 5))
    expected = mixq.generate_torch(qlm, prompt, max_new_tokens=10)
    assert torch.equal(mixq.generate_onnx(path, prompt, max_new_tokens=10), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_left_padded_batch_generates_what_each_prompt_does_alone(request, arch):
    qlm, path = request.getfixturevalue(arch)
    torch.manual_seed(1)
    long, short = torch.randint(0, VOCAB, (1, 9)), torch.randint(0, VOCAB, (1, 4))
    batch = torch.cat([long, torch.cat([torch.full((1, 5), VOCAB - 1), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    for generate, model in ((mixq.generate_torch, qlm), (mixq.generate_onnx, path)):
        together = generate(model, batch, 10, attention_mask=mask)
        assert torch.equal(together[0], generate(model, long, 10)[0]), generate.__name__
        assert torch.equal(together[1, 5:], generate(model, short, 10)[0]), generate.__name__
    with torch.no_grad():  # as Hugging Face's generate does with the same left-padded batch
        hf = qlm.generate(batch, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                          pad_token_id=VOCAB - 1)
    assert torch.equal(hf, together)


@pytest.mark.parametrize("mask,message", [
    ([[1, 1, 0], [1, 1, 1]], "needs left padding"),
    ([[0, 0, 0], [1, 1, 1]], "a row without tokens"),
    ([[1, 2, 1], [1, 1, 1]], r"0 \(padding\) and 1 \(token\) only"),
    ([[1, 1], [1, 1]], "shaped like input_ids"),
])
def test_bad_attention_masks_are_refused(gpt2, mask, message):
    qlm, path = gpt2
    for generate, model in ((mixq.generate_torch, qlm), (mixq.generate_onnx, path)):
        with pytest.raises(ValueError, match=message):
            generate(model, torch.zeros(2, 3, dtype=torch.long), 2, attention_mask=torch.tensor(mask))


def test_a_model_without_a_decoder_config_is_refused(tmp_path):
    with pytest.raises(TypeError, match="pass a Hugging Face causal LM"):
        mixq.export_decoder_onnx(torch.nn.Linear(4, 4), tmp_path / "x.onnx")


def test_a_decoder_quantized_for_litert_is_refused_in_one_line(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    qlm = mixq.quantize(transformers.LlamaForCausalLM(config).eval(), "weight_only", bits=4, group_size=32,
                        runtime="litert", progress=False)
    with pytest.raises(mixq.ExportError, match=r"^layer 'model.layers.0.self_attn.q_proj' \(8 in all\) was "
                                               r"quantized for LiteRT[^\n]*$"):
        mixq.export_decoder_onnx(qlm, tmp_path / "lm.onnx")
    assert not (tmp_path / "lm.onnx").exists()
