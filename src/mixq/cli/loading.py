"""Loading what users point the command line at: a model FACTORY, its weights, and input data."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import math
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixq.cli.arrays import read_arrays
from mixq.cli.errors import CliError, existing_file, first_line

_FACTORY_FIX = "write it as package.module:function or path/to/file.py:function, e.g. --model mymodels:build_net"


def _import(module_name: str) -> Any:
    if module_name.endswith(".py"):
        path = existing_file(module_name, "--model file")
        spec = importlib.util.spec_from_file_location(f"mixq_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[spec.name] = module  # type: ignore[union-attr]  (tracing and pickling look classes up there)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module
    added = os.getcwd() not in sys.path
    if added:  # as `python -m` does: modules in the current directory resolve
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(os.getcwd())


def load_factory(spec: str) -> nn.Module:
    """Import ``MODULE:FACTORY`` (or ``file.py:FACTORY``), call it with no arguments, return the model in eval mode."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise CliError(f"--model {spec!r} is not of the form MODULE:FACTORY", _FACTORY_FIX)
    try:
        module = _import(module_name)
    except CliError:
        raise
    except ImportError as err:
        raise CliError(f"cannot import {module_name!r} for --model ({first_line(err)})",
                       "check the spelling, install its package, or run from the directory that holds it "
                       "(or pass path/to/file.py:FACTORY)") from err
    except Exception as err:
        raise CliError(f"importing {module_name!r} raised {type(err).__name__}: {first_line(err)}",
                       "fix that module (--debug shows the traceback)") from err
    factory = getattr(module, attr, None)
    if factory is None:
        raise CliError(f"{module_name!r} has no attribute {attr!r}", "name a function defined in that module")
    try:
        model = factory if isinstance(factory, nn.Module) else factory()
    except SystemExit as err:
        raise CliError(f"calling {spec}() called sys.exit({err.code!r})",
                       "FACTORY must return the model, not exit") from err
    except Exception as err:
        raise CliError(f"calling {spec}() raised {type(err).__name__}: {first_line(err)}",
                       "FACTORY must build the model when called with no arguments") from err
    if not isinstance(model, nn.Module):
        raise CliError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module",
                       "make FACTORY return the model")
    return model.eval()


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), (dict, nn.Module)):
                obj = obj[key]
                obj = obj.state_dict() if isinstance(obj, nn.Module) else obj
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CliError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors",
                       "save the weights with torch.save(model.state_dict(), path)")
    if all(k.startswith("module.") for k in obj):  # saved from a DDP-wrapped model
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def load_weights(model: nn.Module, path: str, spec: str, trust_pickle: bool = False) -> None:
    """Load ``path`` into ``model`` with ``torch.load(weights_only=True)`` (full unpickling only with
    ``trust_pickle``); raise a CliError naming the mismatching keys and shapes."""
    p = existing_file(path, "--weights")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        if "Unsupported operand" in str(err) or "invalid load key" in str(err):  # not a checkpoint at all
            raise CliError(f"{p} is not a PyTorch checkpoint",
                           "pass a file written by torch.save(model.state_dict(), path)") from err
        raise CliError(f"{p} holds Python objects besides tensors, which mixq does not unpickle by default",
                       "save model.state_dict() instead, or pass --trust-pickle if you trust the file's origin "
                       "(unpickling can run arbitrary code)") from err
    except Exception as err:
        raise CliError(f"cannot read {p} as a PyTorch checkpoint ({first_line(err)})",
                       "pass a file written by torch.save(model.state_dict(), path)") from err
    state, own = _state_dict(obj, p), model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:2])})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("with other shapes", reshaped)) if v]
        raise CliError(f"the weights in {p} do not match the model from {spec}: " + "; ".join(parts),
                       "pass the weights saved from this model's state_dict(), or the FACTORY that built them")
    model.load_state_dict(state)


def _tensor(array: np.ndarray, path: Path) -> torch.Tensor:
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(array.astype(np.int64)))
    raise CliError(f"{path} holds an array of dtype {array.dtype}", "store inputs as float or integer arrays")


def load_batches(spec: str, batch_size: int, max_batches: int | None = None) -> list[Any]:
    """Input batches from a ``.npy``/``.npz`` file (split along the first axis; several arrays in an ``.npz`` are
    positional inputs) or from ``MODULE:CALLABLE`` returning an iterable of batches."""
    if spec.endswith((".npy", ".npz")):
        path = existing_file(spec, "--calib")
        arrays = read_arrays(path, None if max_batches is None else max_batches * batch_size)
        if not arrays or any(a.ndim == 0 for a in arrays):
            raise CliError(f"{path} holds no input arrays with a batch axis", "save arrays shaped (N, ...)")
        if len({len(a) for a in arrays}) > 1:
            raise CliError(f"the arrays in {path} have different lengths {[len(a) for a in arrays]}",
                           "give every input array the same number of samples (first axis)")
        tensors = [_tensor(a, path) for a in arrays]
        batches = [tensors[0][i:i + batch_size] if len(tensors) == 1 else tuple(t[i:i + batch_size] for t in tensors)
                   for i in range(0, len(tensors[0]), batch_size)]
        return batches[:max_batches]
    if ":" in spec:
        source = load_callable(spec, "--calib")
        try:
            batches = list(itertools.islice(iter(source()), max_batches or 1000))
        except SystemExit as err:
            raise CliError(f"--calib {spec} called sys.exit({err.code!r})",
                           "return a list (or generator) of input batches instead of exiting") from err
        except Exception as err:
            raise CliError(f"--calib {spec}() did not give an iterable of batches ({type(err).__name__}: "
                           f"{first_line(err)})", "return a list (or generator) of input tensors, tuples or dicts") \
                from err
        _check_batches(batches, f"--calib {spec}")
        return batches
    raise CliError(f"--calib {spec!r} is neither a .npy/.npz file nor MODULE:CALLABLE",
                   "pass inputs saved with numpy.save / numpy.savez, or a function returning batches")


def _check_batches(batches: list[Any], source: str) -> None:
    """Each batch must be a tensor, a tuple/list of tensors or a dict of tensors, with at least one sample."""
    from mixq.quant.calibration import CalibrationError, check_batch

    for i, batch in enumerate(batches):
        try:
            check_batch(batch, i)
        except CalibrationError as err:
            raise CliError(f"{source}: {first_line(err)}", "yield input tensors (or tuples / dicts of tensors) "
                           "shaped like the model's input, batch first") from err


def load_callable(spec: str, option: str) -> Any:
    """The function ``MODULE:FUNCTION`` names (an importable module or a ``.py`` file), with CLI errors naming
    ``option``."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise CliError(f"{option} {spec!r} is not MODULE:FUNCTION", "write it like nets.py:val_accuracy")
    try:
        func = getattr(_import(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CliError(f"cannot load {spec} ({first_line(err)})", "check the module and function names") from err
    if not callable(func):
        raise CliError(f"{spec} is a {type(func).__name__}, not a function", "name a function")
    return func


def parse_ints(text: str, what: str, example: str) -> list[int]:
    """``"1,3,224,224"`` -> ``[1, 3, 224, 224]``; positive integers only."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise CliError(f"{what} {text!r} is not a list of positive integers", f"write it like {example}")
    return values


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The options that name a user's model and its data (shared by the commands that load one)."""
    from mixq.cli.hf import add_hf_options

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="MODULE:FACTORY",
                        help="importable function returning the nn.Module (package.module:fn or path/to/file.py:fn)")
    source.add_argument("--hf", metavar="DIR",
                        help="a local Hugging Face model directory (save_pretrained output; never downloaded)")
    p.add_argument("--weights", metavar="W.pt", help="state_dict saved with torch.save (loaded with weights_only)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow --weights to hold arbitrary pickled objects (only for files you trust)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--calib", metavar="DATA",
                      help="inputs: .npy/.npz file (first axis = samples) or MODULE:CALLABLE returning batches")
    data.add_argument("--calib-text", metavar="FILE",
                      help="with --hf: calibration texts, one per line, tokenised with the model's tokenizer")
    p.add_argument("--batch-size", type=int, default=32,
                   help="batch size for .npy/.npz data and --calib-text (default 32)")
    p.add_argument("--max-calib-batches", type=int, default=None, metavar="N", help="use at most N batches")
    p.add_argument("--example-shape", metavar="1,3,224,224",
                   help="input shape for export (default: one sample of --calib); with --hf BATCH,SEQUENCE of "
                        "token ids (default: made by the tokenizer)")
    add_hf_options(p)


def _source_file(spec: str | None) -> Path | None:
    """The file behind a ``MODULE:NAME`` option (``file.py`` or a module found from the current directory), or
    the data file itself."""
    if not spec:
        return None
    module, sep, _ = spec.rpartition(":")
    if not sep or module.endswith(".py"):
        return Path(module or spec)
    if not module.replace(".", "").isidentifier():
        return None
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays in a ``.npz`` file by name (a ``.npy`` file's one array is named ``''``); never unpickles."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:
        raise CliError(f"cannot read {path} as NumPy data ({first_line(err)})",
                       "save inputs with numpy.save (.npy, one input) or numpy.savez (.npz, one array per input)") \
            from err
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        return {k: loaded[k] for k in loaded.files}


def input_files(args: argparse.Namespace) -> list[Path]:
    """Every file the options name (model source, weights, data, metric, --calib-text), whatever its suffix:
    outputs must never resolve to any of them."""
    specs = [args.model, args.weights, args.calib, getattr(args, "eval", None), getattr(args, "calib_text", None)]
    return [p for p in map(_source_file, specs) if p is not None]


def load_inputs(args: argparse.Namespace) -> tuple[nn.Module, list[Any] | None, Any]:
    """Model (with weights), data batches (or None) and example inputs from :func:`add_model_options`' options,
    checked against each other: the model must accept both the example and the data."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}", "pass e.g. --batch-size 32")
    if args.max_calib_batches is not None and args.max_calib_batches < 1:
        raise CliError(f"--max-calib-batches must be >= 1, got {args.max_calib_batches}",
                       "pass e.g. --max-calib-batches 8, or leave it out to use every batch")
    from mixq.cli.hf import check_hf_options, load_hf_inputs

    check_hf_options(args)
    if args.hf:
        return load_hf_inputs(args)
    model = load_factory(args.model)
    if args.weights:
        load_weights(model, args.weights, args.model, trust_pickle=args.trust_pickle)
    check_finite_weights(model, args.weights or args.model)
    batches = None
    if args.calib:
        batches = load_batches(args.calib, args.batch_size, args.max_calib_batches)
        if not batches:
            raise CliError(f"--calib {args.calib} gave no batches", "pass at least one input sample")
    example = example_inputs(args.example_shape, batches)
    check_model_accepts(model, example, "--example-shape" if args.example_shape else "--calib")
    if batches and args.example_shape:
        check_model_accepts(model, batches[0], "--calib")
    return model, batches, example


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse (exit 2, before any work) a model whose weights hold NaN or inf, naming the first such tensor."""
    from mixq.quant.finiteness import NonFiniteWeightsError, check_finite

    try:
        check_finite(model, "quantize")
    except NonFiniteWeightsError as err:
        problem = str(err).partition("; ")[0].replace(f"cannot quantize {type(model).__name__}: its", "the")
        raise CliError(f"{problem} (loaded from {source})", "fix or re-save the weights; mixq does not quantize "
                       "NaN or inf weights") from err


def example_inputs(shape_text: str | None, batches: list[Any] | None) -> Any:
    """Random inputs of ``--example-shape``, else one sample of the first data batch."""
    if shape_text:
        shape = parse_ints(shape_text, "--example-shape", "1,3,224,224")
        from mixq.cli import arrays

        if math.prod(shape) * 4 > arrays.MAX_BYTES:
            raise CliError(f"--example-shape {shape_text} would take {math.prod(shape) * 4 / 2**30:.1f} GiB",
                           "pass the shape of one real input, batch first (e.g. 1,3,224,224)")
        if batches and isinstance(batches[0], torch.Tensor) and list(batches[0].shape[1:]) != shape[1:]:
            raise CliError(f"--example-shape {shape} disagrees with the --calib data, shaped "
                           f"{[len(batches[0]), *batches[0].shape[1:]]}", "make them agree, or drop --example-shape")
        return torch.randn(shape)
    if batches:
        first = batches[0]
        if isinstance(first, torch.Tensor):
            return first[:1]
        if isinstance(first, (tuple, list)):
            return tuple(t[:1] for t in first)
        return first
    raise CliError("the input shape is unknown", "pass --example-shape (e.g. 1,3,224,224) or --calib DATA")


def check_model_accepts(model: nn.Module, example: Any, source: str) -> None:
    """Run ``model`` once on ``example``; a failure is bad input data (wrong shape or dtype)."""
    from mixq.quant.calibration import call_model, describe

    try:
        with torch.no_grad():
            call_model(model, example)
    except Exception as err:
        fix = "pass data shaped like the model's input, batch first (e.g. N,3,224,224 for images)"
        if _float_into_embedding(model, example):
            fix = ("the model has an nn.Embedding, which takes integer token ids, and these inputs are float: pass "
                   "integer ids with --calib (an .npz of int64 arrays), or --hf DIR for a Hugging Face model")
        elif hasattr(model, "config") and isinstance(example, dict):
            fix = ("pass --example-shape BATCH,SEQUENCE (or --calib-text, --max-length) within what the model "
                   "accepts")
        raise CliError(f"the model rejects inputs shaped {describe(example)} from {source} ({type(err).__name__}: "
                       f"{first_line(err)})", fix) from err


def _float_into_embedding(model: nn.Module, example: Any) -> bool:
    tensors = example if isinstance(example, (tuple, list)) else [example]
    floats = any(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors)
    return floats and any(isinstance(m, nn.Embedding) for m in model.modules())
