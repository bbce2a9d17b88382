"""Hugging Face models train under MixedPrecision (bf16 and fp16 on CPU) and keep their ``ModelOutput``s."""

from __future__ import annotations

import pytest
import torch

import mixq.amp as amp

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 96, 12


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(config, add_pooling_layer=False)


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def _train(model: torch.nn.Module, precision: str, loss_of, steps: int = 8) -> tuple[list[float], list, list[bool]]:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mp = amp.MixedPrecision(model, opt, precision=precision)
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding in one row, as a tokenizer's batch has
    losses, outputs, applied = [], [], []
    for _ in range(steps):
        with mp.autocast():
            out = model(input_ids=ids, attention_mask=mask, labels=ids) if loss_of is None else model(ids, mask)
            loss = out.loss if loss_of is None else loss_of(out)
        mp.backward(loss)
        applied.append(mp.step())
        mp.zero_grad()
        losses.append(loss.item())
        outputs.append(out)
    return losses, outputs, applied


def _target_loss(out) -> torch.Tensor:
    return (out.last_hidden_state.mean(dim=1) - 0.5).pow(2).mean()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_bert_last_hidden_state_trains(precision):
    torch.manual_seed(0)
    losses, outputs, applied = _train(_bert(), precision, _target_loss)
    out = outputs[-1]
    assert type(out) is transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions
    assert out.last_hidden_state.dtype == out[0].dtype == torch.float32
    assert out.last_hidden_state.shape == (4, SEQ, 32)
    assert sum(applied) >= len(applied) - 2 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_causal_lm_loss_trains(precision):
    torch.manual_seed(0)
    losses, outputs, applied = _train(_llama(), precision, None)
    out = outputs[-1]
    assert type(out) is transformers.modeling_outputs.CausalLMOutputWithPast
    assert out.loss.dtype == out.logits.dtype == torch.float32 and out["loss"] is out.loss
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(applied) >= len(applied) - 2 and losses[-1] < losses[0] - 0.5, losses
