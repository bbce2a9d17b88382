"""``mixq.quantize(..., method=...)`` on Hugging Face decoders: recorded and replayable, block by block, and one
clear line for each kind of bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mixq
from mixq.quant.calibration import CalibrationError

transformers = pytest.importorskip("transformers")


def _tiny_llama(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def _batches(count: int = 4, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 32), generator=gen) for _ in range(count)]


def _logits_error(model: nn.Module, qmodel: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        return sum(float((model(b).logits - qmodel(b).logits).pow(2).mean()) for b in batches)


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_method_is_recorded_and_replays_from_the_config(method):
    lm, calib = _tiny_llama(), _batches()
    q = mixq.quantize(lm, "weight_only", bits=4, group_size=32, method=method, calib_data=calib, progress=False)
    assert q.mixq_config.method.name == method
    rows = [r for r in q.mixq_summary.quantized if r.kind == "Linear"]
    assert len(rows) == 15 and all(method in r.detail for r in rows)
    assert any("2 blocks one at a time" in n for n in q.mixq_summary.notes)
    config = mixq.QuantConfig.from_dict(q.mixq_config.to_dict())
    again = mixq.quantize(lm, config=config, calib_data=calib, progress=False)
    for (name, a), (_, b) in zip(q.named_buffers(), again.named_buffers(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_methods_beat_rtn_at_three_bits(method):
    lm = _tiny_llama()
    calib, held_out = _batches(8), _batches(4, seed=9)
    rtn = mixq.quantize(lm, "weight_only", bits=3, group_size=32, symmetric=False, progress=False)
    q = mixq.quantize(lm, "weight_only", bits=3, group_size=32, symmetric=False, method=method, calib_data=calib,
                      progress=False)
    assert _logits_error(lm, q, held_out) < _logits_error(lm, rtn, held_out)


def test_blockwise_and_whole_model_calibration_both_run():
    lm, calib = _tiny_llama(), _batches()
    whole = mixq.quantize(lm, "weight_only", bits=4, group_size=32, calib_data=calib, progress=False,
                          method=mixq.WeightMethod("gptq", blockwise=False, act_order=True))
    assert "whole-model calibration" in str(whole.mixq_config.method)
    assert not any("one at a time" in n for n in whole.mixq_summary.notes)
    assert _logits_error(lm, whole, calib) < 1.0


def test_gptq_without_calibration_data_is_refused():
    with pytest.raises(ValueError, match="method='gptq' needs calib_data"):
        mixq.quantize(_tiny_llama(), "weight_only", bits=4, method="gptq")


def test_method_options_that_would_do_nothing_are_refused():
    with pytest.raises(ValueError, match="act_order is a GPTQ option"):
        mixq.WeightMethod("awq", act_order=True)
    with pytest.raises(ValueError, match="use mode='weight_only'"):
        mixq.quantize(_tiny_llama(), "dynamic", method="gptq", calib_data=_batches())
    with pytest.raises(ValueError, match="asymmetric weights"):
        mixq.quantize(_tiny_llama(), "dynamic", symmetric=False)


def test_a_group_size_that_does_not_divide_the_layer_is_padded_and_said():
    model = nn.Sequential(nn.Linear(100, 8))
    q = mixq.quantize(model, "weight_only", bits=4, group_size=32, method="gptq", calib_data=[torch.randn(16, 100)],
                      progress=False)
    assert "K=100 zero-padded to 128" in q.mixq_summary.layers[0].detail
    assert any("no stack of decoder blocks" in n for n in q.mixq_summary.notes)


def test_a_nan_weight_is_refused_before_calibration_naming_it():
    lm = _tiny_llama()
    with torch.no_grad():
        lm.model.layers[0].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="parameter 'model.layers.0.self_attn.o_proj.weight' .* holds 1 NaN value"):
        mixq.quantize(lm, "weight_only", bits=4, group_size=32, method="gptq", calib_data=_batches(),
                      progress=False)


def test_nan_activations_during_calibration_are_one_clear_error():
    lm = _tiny_llama()
    lm.model.layers[0].self_attn.register_forward_hook(lambda m, args, out: (out[0] * float("nan"), *out[1:]))
    with pytest.raises(CalibrationError, match="received NaN or inf activations during gptq calibration"):
        mixq.quantize(lm, "weight_only", bits=4, group_size=32, method="gptq", calib_data=_batches(),
                      progress=False)


def test_gpt2_tied_lm_head_is_untied_before_its_weights_move():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    lm = transformers.GPT2LMHeadModel(config).eval()
    assert lm.lm_head.weight is lm.transformer.wte.weight
    rtn = mixq.quantize(lm, "weight_only", bits=4, group_size=32, progress=False)
    q = mixq.quantize(lm, "weight_only", bits=4, group_size=32, method="gptq", calib_data=_batches(),
                      progress=False)
    assert torch.equal(q.transformer.wte.weight, rtn.transformer.wte.weight)  # the table kept its own weights
    assert not torch.equal(q.lm_head.packed, rtn.lm_head.packed)


class _FlippedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # overrides forward: captured, not swapped
        return super().forward(x.flip(-1))


def test_gptq_quantizes_a_captured_subclass_and_the_model_keeps_its_class():
    """The same function written with a permuting Linear subclass: captured per module (issue 18), GPTQ'd block by
    block, the model is still the user's LlamaForCausalLM (``generate``), and it errs about as much as the plain one."""
    plain, calib = _tiny_llama(), _batches()
    wild = _tiny_llama()
    for layer in wild.model.layers:
        old = layer.mlp.down_proj
        layer.mlp.down_proj = _FlippedLinear(old.in_features, old.out_features, bias=False)
        layer.mlp.down_proj.weight.data.copy_(old.weight.data.flip(-1))
    options = {"bits": 4, "group_size": 32, "method": "gptq", "calib_data": calib, "progress": False}
    q_plain, q_wild = mixq.quantize(plain, "weight_only", **options), mixq.quantize(wild, "weight_only", **options)
    rows = {r.name: r for r in q_wild.mixq_summary.quantized}
    assert "gptq" in rows["model.layers.0.mlp.down_proj.mixq_linear_0"].detail
    assert isinstance(q_wild, transformers.LlamaForCausalLM)
    assert q_wild.generate(calib[0][:1, :4], max_new_tokens=2, do_sample=False).shape == (1, 6)
    assert _logits_error(wild, q_wild, calib) < 1.5 * _logits_error(plain, q_plain, calib)
