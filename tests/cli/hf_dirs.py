"""Tiny Hugging Face model directories built offline, as ``save_pretrained`` writes them: a BERT classifier with a
WordPiece tokenizer, and a Llama causal LM whose tokenizer, like GPT-2's and Llama's, has no padding token."""

from __future__ import annotations

from pathlib import Path

_PROSE = """
    the a of and to in is was he for it with as his on be at by i this had not are but from or have an they which one
    you were her all she there would their we him been has when who will more no if out so said what up its about into
    than them can only other new some could time these two may then do first any my now such like our over man me even
    most made after also did many before must through back years where much your way well down should because each
    just those people how too little state good very make world"""
WORDS = tuple(_PROSE.split())
TEXTS = ["the man came back to the world", "she said it was good", "they have been here before", "what is this",
         "one of them was new and very little", "we would like to make it", "", "he made it through the years",
         "i did not say what it was about", "people who can do it"]


def _letters() -> list[str]:
    return list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]


def save_bert(root: Path, max_positions: int = 64) -> Path:
    """A 2-layer BertForSequenceClassification (hidden 32) and a BERT-style WordPiece tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS,
                                                       *_letters()]))}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                                 ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=max_positions)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=max_positions, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def save_llama(root: Path) -> Path:
    """A 2-layer LlamaForCausalLM (hidden 32) and a word-level tokenizer without a padding token."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["<unk>", "<s>", "</s>", *WORDS]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                                     eos_token="</s>")
    config = transformers.LlamaConfig(vocab_size=len(vocab) + 8, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def save_gpt2(root: Path, tokenizer: bool = True) -> Path:
    """A 2-layer GPT2LMHeadModel (hidden 32, Conv1D layers) and, like GPT-2's, a byte-level BPE tokenizer (here
    without merges: one token per byte) with ``<|endoftext|>`` and no padding token."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    config = transformers.GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                     bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(root)
    if tokenizer:
        core = Tokenizer(models.BPE(vocab, merges=[]))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>",
                                             eos_token="<|endoftext|>", model_max_length=64).save_pretrained(root)
    return root
