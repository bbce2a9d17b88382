"""Saving a quantized model to a directory and loading it back bit for bit: ``mixq.save_pretrained`` and
``mixq.from_pretrained``.

The directory holds ``config.json`` (the Hugging Face config, when the model has one, with mixq's recipe under
``quantization_config``, ``quant_method: "mixq"``), ``mixq_model.safetensors`` (every parameter and buffer of the
quantized model: int8 weights, scales, zero points) and ``mixq_example.safetensors`` (a small example input).
Loading rebuilds the quantized structure by running the recipe on a float model of the same architecture (built
from the config, or passed in) and the example, then loads every tensor over it, strictly: the result equals the
saved model exactly, or loading fails naming what differs.

The weights file is deliberately not ``model.safetensors``: transformers skips quantization configs it does not
know, so a plain ``AutoModel.from_pretrained(DIR)`` fails loudly (no weights file) instead of loading float layers
with random weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixq.quant.calibration import Batch, batch_args, call_model
from mixq.quant.graft import copy_model

CONFIG, WEIGHTS, EXAMPLE = "config.json", "mixq_model.safetensors", "mixq_example.safetensors"
QUANT_METHOD = "mixq"
_QAT_MODE = "static (QAT)"


class LoadError(ValueError):
    """The directory does not hold a mixq model, or the rebuilt model does not match the saved tensors."""


def _example(model: nn.Module, example_inputs: Batch | None) -> Batch:
    if example_inputs is not None:
        return example_inputs
    dummy = getattr(model, "dummy_inputs", None)  # Hugging Face models: a few token ids
    if isinstance(dummy, dict):
        try:
            with torch.no_grad():
                call_model(model, dummy)
            return dummy
        except Exception:  # noqa: BLE001, S110 - not this model's inputs (vision, audio): ask for them below
            pass
    raise ValueError(f"save_pretrained needs example_inputs for {type(model).__name__} (one small batch the model "
                     "takes, saved with it so loading can rebuild the quantized layers): pass "
                     "example_inputs=...")


def _save_example(example: Batch, path: Path) -> str:
    from safetensors.torch import save_file

    args, kwargs = batch_args(example)
    tensors = {f"arg{i}": t for i, t in enumerate(args)} if args else dict(kwargs)
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise TypeError("example_inputs must hold tensors only (a tensor, a tuple or a dict of tensors)")
    save_file({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(path))
    return "positional" if args else "keyword"


def _load_example(path: Path, form: str) -> Batch:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if form == "positional":
        return tuple(tensors[f"arg{i}"] for i in range(len(tensors)))
    return tensors


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, example_inputs: Batch | None = None,
                    **_hub_options: Any) -> Path:
    """Save a model quantized by ``mixq.quantize`` (any mode) or ``mixq.convert`` (QAT) to ``directory``.

    ``example_inputs`` is one small batch the model takes (default: a Hugging Face model's ``dummy_inputs``); it is
    saved with the model, since loading reruns the quantization recipe on it to rebuild the quantized layers. Other
    keyword arguments (what transformers' ``save_pretrained`` takes) are ignored. Returns the directory.

    Example::

        mixq.save_pretrained(qmodel, "bert-int8")
        qmodel = mixq.from_pretrained("bert-int8")
    """
    cfg = getattr(model, "mixq_config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} was not quantized by mixq (no .mixq_config); quantize it with "
                         "mixq.quantize or mixq.convert first, or save a float model with its own save_pretrained")
    from safetensors.torch import save_model

    example = _example(model, example_inputs)
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    hf_config = getattr(model, "config", None)
    config = hf_config.to_dict() if hasattr(hf_config, "to_dict") else {}
    if type(model).__module__.startswith("transformers."):
        config["architectures"] = [type(model).__name__]
    summary = getattr(model, "mixq_summary", None)
    pipeline = "qat" if summary is not None and summary.mode == _QAT_MODE else "quantize"
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "pipeline": pipeline,
        "config": cfg.to_dict(),
        "example": _save_example(example, target / EXAMPLE),
        "float_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "float_outputs": _has_float_outputs(model),  # QAT: whether prepare_qat kept the model's outputs float
        "note": "load with mixq.from_pretrained(DIR); transformers cannot load this directory",
    }
    save_model(model, str(target / WEIGHTS))
    (target / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    return target


def _has_float_outputs(model: nn.Module) -> bool:
    from mixq.quant.modules.static import QuantizedLinear

    return any(isinstance(m, QuantizedLinear) and m.y_scale is None for m in model.modules())


def _float_model(config: dict[str, Any], directory: Path) -> nn.Module:
    if "model_type" not in config:
        float_class = config["quantization_config"].get("float_class")
        raise LoadError(f"{str(directory)!r} holds a model that is not a Hugging Face one ({float_class}): pass "
                        "model=<a float model of the same architecture>")
    try:
        import transformers
    except ImportError as err:
        raise LoadError("this directory holds a Hugging Face model and transformers is not installed: pip install "
                        "transformers, or pass model=<a float model of the same architecture>") from err
    hf_config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    architectures = getattr(hf_config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise LoadError(f"config.json names no transformers class (architectures: {architectures}); pass "
                        "model=<a float model of the same architecture>")
    return cls(hf_config).eval()


def _rebuild(float_model: nn.Module, recipe: dict[str, Any], example: Batch) -> nn.Module:
    """The quantized structure of ``recipe`` on ``float_model`` (weights and scales are overwritten after)."""
    import mixq
    from mixq.quant.spec import QuantConfig, WeightMethod

    cfg = QuantConfig.from_dict(recipe["config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if recipe["pipeline"] == "qat":
            qat = mixq.prepare_qat(float_model, example_inputs=example, config=mixq.QATConfig(
                cfg.weight, cfg.activation, cfg.observer, exclude=cfg.exclude,
                float_outputs=recipe.get("float_outputs", True)))
            with torch.no_grad():
                call_model(qat.train(), example)  # every layer the example reaches gets activation ranges
            return mixq.convert(qat.eval())
        # the structure does not depend on how weights were chosen: rebuild with round-to-nearest
        cfg = dataclasses.replace(cfg, method=WeightMethod("rtn"))
        return mixq.quantize(float_model, config=cfg, calib_data=[example] if cfg.needs_calibration else None,
                             example_inputs=example, progress=False)


def from_pretrained(directory: str | os.PathLike, *, model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by ``mixq.save_pretrained``: equal to the saved one bit for bit, in eval mode.

    A Hugging Face model is rebuilt from ``config.json``; any other model needs ``model``, a float model of the
    same architecture (its weights do not matter and it is not modified).

    Example: ``qmodel = mixq.from_pretrained("bert-int8")``.
    """
    from safetensors.torch import load_model

    source = Path(directory)
    if not (source / CONFIG).is_file():
        raise LoadError(f"{str(source)!r} holds no {CONFIG}; pass the directory mixq.save_pretrained wrote")
    config = json.loads((source / CONFIG).read_text())
    recipe = config.get("quantization_config") or {}
    if recipe.get("quant_method") != QUANT_METHOD:
        raise LoadError(f"{str(source)!r} does not hold a mixq model (quantization_config.quant_method is "
                        f"{recipe.get('quant_method')!r}); load it with transformers")
    float_model = copy_model(model).eval() if model is not None else _float_model(config, source)
    example = _load_example(source / EXAMPLE, recipe["example"])
    qmodel = _rebuild(float_model, recipe, example)
    try:
        load_model(qmodel, str(source / WEIGHTS), strict=True)
    except RuntimeError as err:
        raise LoadError(f"the quantized model rebuilt from {str(source)!r} does not match its saved tensors "
                        f"({str(err).splitlines()[0]}); was it saved by another mixq version, or is `model` "
                        "another architecture?") from err
    return mark_saveable(qmodel.eval())


def mark_saveable(model: nn.Module) -> nn.Module:
    """Route the quantized model's own ``save_pretrained`` (transformers') to :func:`save_pretrained`, which keeps
    the quantized layers; transformers' would save float-named weights that reload as random layers."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained = functools.partial(save_pretrained, model)
    return model
