"""Tiny random-config Hugging Face task models (nothing downloaded), one per task head, with example inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch

VOCAB = 100


def _bert_config(transformers, **extra):
    return transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64, **extra)


def _tokens(batch: int = 2, seq: int = 8, *, mask: bool = True, types: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    inputs = {"input_ids": ids}
    if mask:
        inputs["attention_mask"] = torch.ones_like(ids)
        inputs["attention_mask"][0, -2:] = 0  # padding in the first row
    if types:
        inputs["token_type_ids"] = torch.zeros_like(ids)
    return inputs


def _llama(transformers):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64))


def _gpt2(transformers):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                                                n_positions=64))


def _vit(transformers):
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3))


def _wav2vec2(transformers):
    return transformers.Wav2Vec2ForSequenceClassification(transformers.Wav2Vec2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, num_labels=3, classifier_proj_size=16))


# task -> (builder(transformers) -> model, example inputs as a dict in forward's order)
TASKS: dict[str, tuple[Callable, Callable[[], dict[str, torch.Tensor]]]] = {
    "base": (lambda t: t.BertModel(_bert_config(t)), _tokens),
    "sequence-classification": (lambda t: t.BertForSequenceClassification(_bert_config(t, num_labels=3)), _tokens),
    "token-classification": (lambda t: t.BertForTokenClassification(_bert_config(t, num_labels=5)), _tokens),
    "masked-lm": (lambda t: t.BertForMaskedLM(_bert_config(t)), _tokens),
    "question-answering": (lambda t: t.BertForQuestionAnswering(_bert_config(t)), _tokens),
    "multiple-choice": (lambda t: t.BertForMultipleChoice(_bert_config(t)),
                        lambda: {k: v.reshape(1, 2, -1) for k, v in _tokens().items()}),
    "causal-lm-llama": (_llama, lambda: _tokens(types=False)),
    "causal-lm-gpt2": (_gpt2, lambda: _tokens(types=False)),
    "image-classification": (_vit, lambda: {"pixel_values": torch.randn(2, 3, 16, 16,
                                                                        generator=torch.Generator().manual_seed(0))}),
    "audio-classification": (_wav2vec2, lambda: {"input_values": torch.randn(
        2, 400, generator=torch.Generator().manual_seed(0))}),
}


def build(task: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The tiny model of ``task`` (eval mode, seed 0) and its example inputs."""
    import transformers

    make, example = TASKS[task]
    torch.manual_seed(0)
    return make(transformers).eval(), example()
