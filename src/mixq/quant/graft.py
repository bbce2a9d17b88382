"""The quantized model stays the user's model: graph mode's result, put back under the model's own class.

Graph mode (``mixq.quant.graph``, ``mixq.quant.graph_export``) quantizes a captured ``torch.fx.GraphModule`` of the
whole model. Handing that back would drop what the user's class gives them: ``isinstance`` checks, ``config``,
``save_pretrained``, ``generation_config`` and every other method. So the graph module's state (its submodules,
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
import warnings
from collections.abc import Iterator
from typing import Any, TypeVar

from torch import fx, nn

__all__ = ["Home", "copy_model", "graft", "home_of", "no_leafspec_warning"]

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


def graft(gm: fx.GraphModule, home: Home) -> nn.Module:
    """An instance of ``Quantized<Class>`` (a subclass of the model's class) holding ``gm``'s state and running its
    graph as ``forward``, with the model's plain attributes."""
    cls, attributes = home
    quantized = type(f"Quantized{cls.__name__}", (cls,), {
        "forward": type(gm).forward,
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
