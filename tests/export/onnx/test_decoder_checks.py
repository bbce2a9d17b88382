"""``export_decoder_onnx`` and ``generate_onnx`` refuse what cannot work before running, in one line: weights with
NaN, a model without a key/value cache, a file that is not a decoder, an empty prompt, ids outside the vocabulary
and a generation past the model's positions (issue 23)."""

from __future__ import annotations

import pytest
import torch

import mixq

transformers = pytest.importorskip("transformers")
VOCAB, POSITIONS = 64, 32


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=POSITIONS)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return mixq.export_decoder_onnx(_llama(), tmp_path_factory.mktemp("dec") / "decoder.onnx")


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    return mixq.export_onnx(torch.nn.Linear(4, 2).eval(), torch.rand(1, 4), tmp_path_factory.mktemp("enc") / "e.onnx")


def test_a_nan_weight_is_refused_naming_it(tmp_path):
    lm = _llama()
    with torch.no_grad():
        lm.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.up_proj.weight' \(64, 32\) holds 1 NaN value"):
        mixq.export_decoder_onnx(lm, tmp_path / "d.onnx")
    assert not list(tmp_path.iterdir())


def test_a_model_without_a_cache_is_refused_in_one_line(tmp_path):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=POSITIONS)
    with pytest.raises(TypeError, match="BertForMaskedLM is not a causal LM that returns a key/value cache") as info:
        mixq.export_decoder_onnx(transformers.BertForMaskedLM(config).eval(), tmp_path / "d.onnx")
    assert "\n" not in str(info.value) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("ids,new,message", [
    (torch.zeros(1, 0, dtype=torch.long), 3, "the prompt is empty"),
    (torch.tensor([[1, VOCAB]]), 3, f"token id {VOCAB}, outside the vocabulary"),
    (torch.tensor([[1, -1]]), 3, "token id -1, outside the vocabulary"),
    (torch.tensor([[1, 2]]), POSITIONS, f"runs past the model's {POSITIONS} positions"),
], ids=["empty prompt", "id past the vocabulary", "negative id", "past the positions"])
def test_generate_refuses_before_running(decoder, ids, new, message):
    with pytest.raises(ValueError, match=message):
        mixq.generate_onnx(decoder, ids, new)


def test_generate_refuses_a_file_that_is_not_a_decoder(encoder_file, tmp_path):
    with pytest.raises(ValueError, match="not a key/value-cache decoder"):
        mixq.generate_onnx(encoder_file, torch.tensor([[1, 2]]), 2)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        mixq.generate_onnx(tmp_path / "junk.onnx", torch.tensor([[1, 2]]), 2)


def test_generation_up_to_the_last_position_still_runs(decoder):
    out = mixq.generate_onnx(decoder, torch.tensor([[1, 2]]), POSITIONS - 2)
    assert out.shape == (1, POSITIONS)
