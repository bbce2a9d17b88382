"""``--hf DIR``: a local Hugging Face model directory for the command line — the model (``AutoModel`` or the task
class of ``--hf-task``), its tokenizer, calibration batches tokenised from ``--calib-text`` and integer example
inputs. Nothing is ever downloaded: every load is ``local_files_only``."""

from __future__ import annotations

import argparse
import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.cli.errors import CliError, existing_file, first_line
from mixq.cli.hftask import check_task
from mixq.cli.limits import check_token_shape

TASKS = {  # --hf-task -> the transformers Auto class that loads it
    "base": "AutoModel",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json")
DEFAULT_MAX_LENGTH = 128
# Tokenised when neither calibration data nor --example-shape is given: two rows of different length, so the example
# carries padding and a real attention mask.
SAMPLE_TEXTS = ("Quantization makes a model smaller and faster.",
                "This second sentence is longer, so the batch of two holds padding and an attention mask.")
_NOT_LOCAL = ("mixq never downloads models: save it with save_pretrained(DIR) or fetch it first (e.g. `hf download "
              "NAME --local-dir DIR`), then pass --hf DIR")


def add_hf_options(p: argparse.ArgumentParser) -> None:
    """The options that only apply with ``--hf`` (``--hf`` itself and ``--calib-text`` live in exclusive groups)."""
    p.add_argument("--hf-task", choices=tuple(TASKS), default=None,
                   help="with --hf: which model class to load (default base: AutoModel, the encoder/decoder without "
                        "a task head)")
    p.add_argument("--max-length", type=int, default=None, metavar="N",
                   help=f"with --hf: tokens per --calib-text line, longer lines are truncated (default "
                        f"{DEFAULT_MAX_LENGTH} or the model's limit if smaller)")


def model_dir(text: str) -> Path:
    """``--hf``'s directory, checked: it exists locally and holds ``config.json``."""
    path = Path(text).expanduser()
    if path.is_file():
        raise CliError(f"--hf {text!r} is a file, not a model directory",
                       "pass the directory save_pretrained() wrote (it holds config.json)")
    if not path.is_dir():
        raise CliError(f"--hf {text!r} is not a local directory", _NOT_LOCAL)
    if not (path / "config.json").is_file():
        raise CliError(f"--hf {text!r} holds no config.json, so it is not a Hugging Face model directory",
                       "pass the directory model.save_pretrained(DIR) wrote")
    return path


def _transformers() -> Any:
    from mixq.quiet import import_quietly

    try:  # transformers' model classes import torchao when installed, which logs noise on import
        transformers = import_quietly("transformers", "transformers.modeling_utils")
    except ImportError as err:
        raise CliError("--hf needs the transformers package, which is not installed",
                       "pip install transformers (or mixq[hf])") from err
    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own load report is replaced by mixq's one-line errors and notes."""
    logging = _transformers().utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_model(directory: Path, task: str) -> nn.Module:
    """The model in ``directory`` as ``TASKS[task]``, float32, eval mode, without a KV cache in its outputs (but a
    causal LM's, which the key/value-cache decoder export uses).

    Refuses (CliError) a task whose head the directory has no weights for: it would be randomly initialised.
    """
    transformers = _transformers()
    auto = getattr(transformers, TASKS[task])
    try:
        with _quiet_transformers():
            model, info = auto.from_pretrained(directory, local_files_only=True, output_loading_info=True)
    except Exception as err:
        raise CliError(f"transformers cannot load {TASKS[task]} from {str(directory)!r} ({first_line(err)})",
                       "check --hf-task against the model's architecture in config.json, and that the directory "
                       "holds its weights (model.safetensors)") from err
    missing = list(info.get("missing_keys") or []) + [str(k[0]) for k in info.get("mismatched_keys") or []]
    if missing:
        raise CliError(f"{str(directory)!r} has no weights for {len(missing)} parameters of "
                       f"{type(model).__name__} (e.g. {', '.join(sorted(missing)[:2])}), which would be random",
                       f"choose the --hf-task the model was saved as (architectures in config.json: "
                       f"{getattr(model.config, 'architectures', None)}), or base for the bare model")
    if hasattr(model.config, "use_cache") and task != "causal-lm":
        model.config.use_cache = False  # export maps token ids to logits; a KV cache is not an output here
    # a causal LM keeps its cache: it is exported as a key/value-cache decoder (and static mode quantizes it layer
    # by layer, since one captured graph cannot carry the cache)
    return model.float().eval()


def load_tokenizer(directory: Path, why: str) -> Any:
    """The tokenizer saved in ``directory``, with a padding token (the end-of-text one when it has none)."""
    transformers = _transformers()
    fix = ("save it next to the model with tokenizer.save_pretrained(DIR), or pass --calib DATA and --example-shape "
           "BATCH,SEQUENCE instead")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CliError(f"{why} needs the tokenizer, but {str(directory)!r} holds none (no tokenizer.json, "
                       "vocab.txt, tokenizer.model...)", fix)
    try:
        with _quiet_transformers():
            tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise CliError(f"{why} needs the tokenizer, but none loads from {str(directory)!r} ({first_line(err)})",
                       fix) from err
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):  # transformers builds an empty one from config
        raise CliError(f"the tokenizer in {str(directory)!r} has no vocabulary besides its special tokens", fix)
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is None:
            raise CliError(f"the tokenizer in {str(directory)!r} has no padding, end-of-text or unknown token, so "
                           "texts of different lengths cannot be batched", "pass --batch-size 1")
        tokenizer.pad_token = fallback  # as for GPT-2 and Llama: padded positions are masked out anyway
    return tokenizer


def model_limit(model: nn.Module, tokenizer: Any = None) -> int | None:
    """The longest sequence the model (and tokenizer) accept, when they say."""
    limits = [getattr(model.config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(v) for v in limits if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else None


def _max_length(requested: int | None, limit: int | None) -> int:
    if requested is None:
        return min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)
    if requested < 1 or (limit is not None and requested > limit):
        raise CliError(f"--max-length {requested} is outside what the model accepts (1..{limit})",
                       f"pass --max-length {min(DEFAULT_MAX_LENGTH, limit or DEFAULT_MAX_LENGTH)}, or leave it out")
    return requested


def _accepted(model: nn.Module, encoded: Any) -> dict[str, torch.Tensor]:
    """The tokenizer outputs the model's forward takes by name (e.g. no token_type_ids for Llama)."""
    names = inspect.signature(model.forward).parameters
    return {k: v for k, v in encoded.items() if k in names}


def read_texts(path_text: str, limit: int | None = None) -> list[str]:
    """The non-empty lines of ``--calib-text`` (at most ``limit``)."""
    path = existing_file(path_text, "--calib-text")
    try:
        with path.open(encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise CliError(f"--calib-text {path_text!r} is not UTF-8 text ({first_line(err)})",
                       "pass a plain text file, one text per line") from err
    if not texts:
        raise CliError(f"--calib-text {path_text!r} holds no text", "write one calibration text per line")
    return texts[:limit] if limit else texts


def text_batches(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int,
                 batch_size: int) -> list[dict[str, torch.Tensor]]:
    """``texts`` tokenised ``batch_size`` at a time: padded to the longest in the batch, truncated to
    ``max_length``, with attention masks; only the inputs ``model`` takes."""
    return [_accepted(model, tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                       max_length=max_length, return_tensors="pt"))
            for i in range(0, len(texts), batch_size)]


def shaped_example(model: nn.Module, shape: list[int], tokenizer: Any = None) -> dict[str, torch.Tensor]:
    """Integer inputs of ``--example-shape BATCH,SEQUENCE``: token ids below the vocabulary size, masks of ones, and
    zeros for any other integer input the tokenizer makes (token types)."""
    limit = model_limit(model, tokenizer)
    if len(shape) != 2:
        raise CliError(f"--example-shape {','.join(map(str, shape))} has {len(shape)} numbers, but a Hugging Face "
                       "model takes token ids shaped BATCH,SEQUENCE", "pass e.g. --example-shape 2,128")
    if limit is not None and shape[1] > limit:
        raise CliError(f"--example-shape asks for {shape[1]} tokens, more than the model's limit of {limit}",
                       f"pass a sequence length <= {limit}")
    check_token_shape(model.config, shape[0], shape[1], "--example-shape")
    vocab = min(v for v in (getattr(model.config, "vocab_size", None), len(tokenizer) if tokenizer else None,
                            1 << 30) if v)
    names = list(getattr(tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, vocab, shape, generator=generator)}
    for name in names:
        if name != "input_ids":
            inputs[name] = torch.ones(shape, dtype=torch.long) if "mask" in name else torch.zeros(shape,
                                                                                                  dtype=torch.long)
    return _accepted(model, inputs)


def tokenizer_example(model: nn.Module, tokenizer: Any) -> dict[str, torch.Tensor]:
    """Example inputs made by the tokenizer from :data:`SAMPLE_TEXTS` (a padded batch of two)."""
    limit = model_limit(model, tokenizer)
    return text_batches(model, tokenizer, list(SAMPLE_TEXTS), limit or DEFAULT_MAX_LENGTH, len(SAMPLE_TEXTS))[0]


def _rows(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, dict):
        return {k: v[:n] for k, v in batch.items()}
    return tuple(t[:n] for t in batch)


def check_hf_options(args: argparse.Namespace) -> None:
    """Refuse the --hf-only options without --hf, and --max-length without --calib-text (it would do nothing)."""
    if not args.hf:
        used = [flag for flag, value in (("--hf-task", args.hf_task), ("--calib-text", args.calib_text),
                                         ("--max-length", args.max_length)) if value is not None]
        if used:
            raise CliError(f"{', '.join(used)} only apply to a Hugging Face model directory",
                           "pass --hf DIR instead of --model, or drop them")
    elif args.max_length is not None and not args.calib_text:
        raise CliError("--max-length sets how --calib-text lines are truncated, but no --calib-text is given",
                       "pass --calib-text FILE, or use --example-shape BATCH,SEQUENCE for the export shape")


def load_hf_inputs(args: argparse.Namespace) -> tuple[nn.Module, list[Any] | None, Any]:
    """Model, calibration batches (or None) and example inputs for ``--hf DIR`` and the options around it."""
    from mixq.cli.loading import check_finite_weights, check_model_accepts, load_batches, load_weights, parse_ints

    directory = model_dir(args.hf)
    check_task(directory, args.hf_task or "base")  # before any weight loads
    if args.calib_text:
        existing_file(args.calib_text, "--calib-text")  # a typo fails before the model loads
    model = load_model(directory, args.hf_task or "base")
    if args.weights:
        load_weights(model, args.weights, args.hf, trust_pickle=args.trust_pickle)
    check_finite_weights(model, args.weights or args.hf)
    tokenizer = None
    if args.calib_text or not (args.calib or args.example_shape):
        why = "--calib-text" if args.calib_text else "making example inputs (no --calib or --example-shape given)"
        tokenizer = load_tokenizer(directory, why)
    batches = None
    if args.calib_text:
        texts = read_texts(args.calib_text, args.max_calib_batches and args.max_calib_batches * args.batch_size)
        max_length = _max_length(args.max_length, model_limit(model, tokenizer))
        batches = text_batches(model, tokenizer, texts, max_length, args.batch_size)
    elif args.calib:
        batches = load_batches(args.calib, args.batch_size, args.max_calib_batches)
        if not batches:
            raise CliError(f"--calib {args.calib} gave no batches", "pass at least one input sample")
    if args.example_shape:
        example = shaped_example(model, parse_ints(args.example_shape, "--example-shape", "2,128"), tokenizer)
        source = "--example-shape"
    elif batches:
        example = _rows(batches[0], 2)
        source = "--calib-text" if args.calib_text else "--calib"
    else:
        example, source = tokenizer_example(model, tokenizer), "the tokenizer"
    check_model_accepts(model, example, source)
    if batches and source == "--example-shape":
        check_model_accepts(model, batches[0], "--calib-text" if args.calib_text else "--calib")
    return model, batches, example

