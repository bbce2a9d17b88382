"""The quantized model stays the user's model: graph mode's result, put back under the model's own class.

Graph mode (``mixq.quant.graph``, ``mixq.quant.graph_export``) quantizes a captured ``torch.fx.GraphModule`` of the
whole model, or of a task model's base model (``mixq.quant.root_capture``). Handing that back would drop what the
user's class gives them: ``isinstance`` checks, ``config``, ``save_pretrained``, ``generation_config`` and every
other method. So the graph module's state (its submodules,
parameters, buffers and generated code) is moved into an instance of a subclass of the model's own class,
``Quantized<Class>``, whose ``forward`` is the captured graph. The instance keeps the original model's plain
attributes (``config`` and the like); methods that call ``forward`` (``generate`` does not apply: decoders with a
key/value cache are not captured) run the quantized graph.

Submodules keep their names, so ``state_dict`` keys, ``get_submodule`` paths and layer names in the summary are the
graph module's. The subclass is created per quantized model and is not importable, so pickling the whole model fails
loudly; ``mixq.save_pretrained`` (or a ``state_dict``) is the way to save it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import fx, nn

__all__ = ["Home", "bound_forward", "copy_model", "graft", "graph_modules", "home_of", "no_leafspec_warning"]

# what every nn.Module keeps in its __dict__ (parameters, buffers, submodules, hooks, flags): never carried over
_MODULE_STATE = frozenset(vars(nn.Module()))
Home = tuple[type, dict[str, Any]]
M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def no_leafspec_warning() -> Iterator[None]:
    """Silence torch's warning about its own deprecated ``LeafSpec``, which copying a graph module captured by
    ``torch.export`` (its pytree specs) raises on every copy and which says nothing to a user (only that one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        yield


def copy_model(model: M) -> M:
    """A deep copy of ``model`` (without torch's ``LeafSpec`` warning: :func:`no_leafspec_warning`)."""
    with no_leafspec_warning():
        return copy.deepcopy(model)


def home_of(model: nn.Module) -> Home | None:
    """The class and plain attributes of ``model`` that a graph module of it should get back (None for a model
    that is already a graph module)."""
    if isinstance(model, fx.GraphModule):
        return None
    return type(model), {k: v for k, v in vars(model).items() if k not in _MODULE_STATE}


def _graph_inputs(cls: type, run_graph: Callable[..., Any]) -> tuple[inspect.Signature, list[str]] | None:
    """The model class's ``forward`` signature and the captured graph's input names, when every graph input is a
    named parameter of that ``forward`` (None: calls go to the graph as they are)."""
    try:
        original, graph = inspect.signature(cls.forward), inspect.signature(run_graph)
    except (TypeError, ValueError):
        return None
    params = list(graph.parameters.values())[1:]  # after self
    kinds = {p.kind for p in original.parameters.values()}
    if (inspect.Parameter.VAR_POSITIONAL in kinds or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
            or not all(p.name in original.parameters for p in params)):
        return None
    return original, [p.name for p in params]


def _is_default(original: inspect.Signature, name: str, value: Any) -> bool:
    """Whether ``value`` for ``name`` is what the graph was captured with when the call left it out: None, or
    the parameter's own (non-tensor) default."""
    if value is None:
        return True
    param = original.parameters.get(name)
    return (param is not None and param.default is not inspect.Parameter.empty
            and not isinstance(value, torch.Tensor) and type(value) is type(param.default) and value == param.default)


def _same(accepted: Mapping[str, Any] | None, name: str, value: Any) -> bool:
    return accepted is not None and name in accepted and type(value) is type(accepted[name]) and (
        value == accepted[name])


def bound_forward(cls: type, run_graph: Callable[..., Any], accepted: Mapping[str, Any] | None = None
                  ) -> Callable[..., Any]:
    """``forward`` of ``Quantized<Class>``: a call is bound as ``cls.forward`` binds it (positional arguments by the
    original's parameter order, so ``q(ids, mask)`` means what it means to the original even when the graph was
    captured from keyword batches in another order) and handed to the graph by name. An input the graph was
    captured with and the call leaves out, or one the call sets that the graph was captured without, is refused in
    one line: the captured graph cannot compute what the original ``forward`` does with them. ``accepted``:
    non-tensor inputs whose values the graph was checked to compute the same with (a parent model's
    ``return_dict=True``), taken and dropped."""
    found = _graph_inputs(cls, run_graph)
    if found is None:
        return run_graph
    original, names = found
    var_keyword = next((p.name for p in original.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    model = cls.__name__

    @functools.wraps(run_graph)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        try:
            given = dict(original.bind(self, *args, **kwargs).arguments)
        except TypeError as err:
            raise TypeError(f"{model}.forward: {err}") from None
        given.pop(next(iter(original.parameters)))  # self
        given.update(given.pop(var_keyword, None) or {})
        missing = [n for n in names if given.get(n) is None]
        if missing:
            raise TypeError(f"quantized {model} runs the graph captured from its calibration inputs "
                            f"({', '.join(names)}): pass {', '.join(missing)} too (a captured graph cannot fill in "
                            "what the original forward computes for a missing input)")
        extra = [n for n, v in given.items() if n not in names and not _is_default(original, n, v)
                 and not _same(accepted, n, v)]
        if extra:
            raise TypeError(f"quantized {model} runs the graph captured from its calibration inputs "
                            f"({', '.join(names)}), without {', '.join(extra)}: leave it out, or quantize with "
                            "calibration batches that pass it")
        return run_graph(self, **{n: given[n] for n in names})

    return forward


def graph_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose forward is a graph-mode graph: ``model`` itself where it is one (a graph
    module, or grafted whole), and every ``Quantized<Class>`` inside it (a task model's base model)."""
    return [m for m in model.modules() if isinstance(getattr(m, "graph", None), fx.Graph)
            and (m is model or type(m).__module__ == __name__)]


def graft(gm: fx.GraphModule, home: Home, accepted: Mapping[str, Any] | None = None) -> nn.Module:
    """An instance of ``Quantized<Class>`` (a subclass of the model's class) holding ``gm``'s state and running its
    graph as ``forward``, with the model's plain attributes (``accepted``: see :func:`bound_forward`)."""
    cls, attributes = home
    quantized = type(f"Quantized{cls.__name__}", (cls,), {
        "forward": bound_forward(cls, type(gm).forward, accepted),
        "graph": property(lambda self: self._graph, doc="The quantized graph that forward runs (torch.fx)."),
        "__doc__": f"{cls.__name__} quantized by mixq: its forward is the captured, quantized graph "
                   "(mixq.quant.graft).",
        "__module__": __name__,
    })
    model = quantized.__new__(quantized)
    state = vars(model)
    state.update(attributes)
    state.update(vars(gm))  # the graph module's submodules, parameters, buffers, specs and code win
    return model
