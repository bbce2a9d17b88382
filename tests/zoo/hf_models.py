"""Tiny random-config Hugging Face models for the conformance zoo, built from config classes (nothing downloaded).

Each builder takes the ``transformers`` module and returns the model in eval mode; sizes are the smallest that keep
each architecture's structure (two layers or stages, two heads, hidden size 32). Weights are initialised 5x wider
than transformers' default (``initializer_range`` 0.1, not 0.02), so each block changes the residual stream as a
trained one does: with the default, the output is mostly the embedding and a block computed wrongly goes unseen.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

VOCAB = 100
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64, initializer_range=0.1)
_DECODER = dict(_TEXT, num_key_value_heads=1, pad_token_id=0, bos_token_id=0, eos_token_id=0)


def _bart_encoder(t) -> nn.Module:
    from transformers.models.bart.modeling_bart import BartEncoder

    return BartEncoder(t.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.1))


def _whisper_encoder(t) -> nn.Module:
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder(t.WhisperConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                          decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64,
                                          decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16,
                                          max_target_positions=16, init_std=0.1))


ENCODERS: dict[str, Callable] = {
    "bert": lambda t: t.BertModel(t.BertConfig(**_TEXT)),
    "roberta": lambda t: t.RobertaModel(t.RobertaConfig(**dict(_TEXT, max_position_embeddings=66), pad_token_id=1)),
    "distilbert": lambda t: t.DistilBertModel(t.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2,
                                                                 hidden_dim=64, max_position_embeddings=64,
                                                                 initializer_range=0.1)),
    "albert": lambda t: t.AlbertModel(t.AlbertConfig(**_TEXT, embedding_size=16)),
    "electra": lambda t: t.ElectraModel(t.ElectraConfig(**_TEXT, embedding_size=16)),
    "deberta-v2": lambda t: t.DebertaV2Model(t.DebertaV2Config(**_TEXT, relative_attention=True, position_buckets=16,
                                                               pos_att_type=["p2c", "c2p"])),
    "mpnet": lambda t: t.MPNetModel(t.MPNetConfig(**_TEXT)),
    "t5-encoder": lambda t: t.T5EncoderModel(t.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64,
                                                        num_layers=2, num_heads=2, initializer_factor=5.0)),
    "bart-encoder": _bart_encoder,
}

DECODERS: dict[str, Callable] = {
    "gpt2": lambda t: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                                     n_positions=64, initializer_range=0.1)),
    "gpt-neo": lambda t: t.GPTNeoForCausalLM(t.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2,
                                                            num_heads=2, attention_types=[[["global", "local"], 1]],
                                                            intermediate_size=64, max_position_embeddings=64,
                                                            window_size=16, initializer_range=0.1)),
    "opt": lambda t: t.OPTForCausalLM(t.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                                  num_attention_heads=2, max_position_embeddings=64,
                                                  word_embed_proj_dim=32, pad_token_id=1, init_std=0.1)),
    "llama": lambda t: t.LlamaForCausalLM(t.LlamaConfig(**_DECODER)),
    "mistral": lambda t: t.MistralForCausalLM(t.MistralConfig(**_DECODER)),
    "qwen2": lambda t: t.Qwen2ForCausalLM(t.Qwen2Config(**_DECODER)),
    "phi3": lambda t: t.Phi3ForCausalLM(t.Phi3Config(**_DECODER)),
    "gemma": lambda t: t.GemmaForCausalLM(t.GemmaConfig(**_DECODER, head_dim=16)),
}

_STAGES = dict(num_channels=3, num_labels=10, initializer_range=0.1)
VISION: dict[str, Callable] = {
    "vit": lambda t: t.ViTForImageClassification(t.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                                             num_hidden_layers=2, num_attention_heads=2,
                                                             intermediate_size=64, **_STAGES)),
    "deit": lambda t: t.DeiTForImageClassification(t.DeiTConfig(image_size=32, patch_size=8, hidden_size=32,
                                                                num_hidden_layers=2, num_attention_heads=2,
                                                                intermediate_size=64, **_STAGES)),
    "swin": lambda t: t.SwinForImageClassification(t.SwinConfig(image_size=32, patch_size=4, embed_dim=16,
                                                                depths=[1, 1], num_heads=[2, 2], window_size=4,
                                                                **_STAGES)),
    "convnext": lambda t: t.ConvNextForImageClassification(t.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32],
                                                                            depths=[1, 1],
                                                                            **_STAGES)),
    "resnet": lambda t: t.ResNetForImageClassification(t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                                                                      depths=[1, 1], layer_type="basic", **_STAGES)),
    "mobilenet-v2": lambda t: t.MobileNetV2ForImageClassification(t.MobileNetV2Config(image_size=32,
                                                                                      depth_multiplier=0.25,
                                                                                      **_STAGES)),
    "efficientnet": lambda t: t.EfficientNetForImageClassification(t.EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, **_STAGES)),
    "regnet": lambda t: t.RegNetForImageClassification(t.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32],
                                                                      depths=[1, 1], groups_width=8, **_STAGES)),
}

AUDIO: dict[str, Callable] = {
    "whisper-encoder": _whisper_encoder,
    "wav2vec2": lambda t: t.Wav2Vec2Model(t.Wav2Vec2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, initializer_range=0.1)),
}
