"""What graph mode captures with ``torch.export``, for static quantization and QAT alike: a Hugging Face task
model's base model, else the whole model.

A captured graph takes only the inputs it was captured with. Capturing a task model (``BertForSequenceClassification``)
whole would freeze its head and loss into the graph and refuse ``labels``; capturing its ``base_model`` (``bert``)
keeps the head, the loss and the class's conveniences as the model's own Python. The base model's inputs are the
ones the head passed it in a probe forward pass; its non-tensor ones (``return_dict=True``) are accepted by the
grafted base model only after the graph was checked to compute with them what the base model computes
(``mixq.quant.graph_export.export_graph``'s ``reference``). The graph then goes back in the base model's place under
its own class (``mixq.quant.graft``).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import torch
from torch import fx, nn

from mixq.messages import first_line
from mixq.quant.calibration import Batch
from mixq.quant.capture import first_call_inputs, plain_graph_module
from mixq.quant.fusion import set_submodule
from mixq.quant.graft import Home, graft, home_of
from mixq.quant.graph_export import export_graph

__all__ = ["RootCapture", "capture_graph", "task_root"]


@dataclasses.dataclass
class RootCapture:
    """Where graph mode captured the model: ``root`` ("" for the whole model) as ``graph``; ``home`` and
    ``accepted`` put the graph back under the root's class (:func:`mixq.quant.graft.graft`). ``left_float``: the
    target layers (their names in the model) the graph does not call as one layer, which stay float, and why."""

    root: str
    graph: fx.GraphModule
    home: Home | None = None
    accepted: dict[str, Any] = dataclasses.field(default_factory=dict)
    left_float: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """What the graph's module names get in the model (``"bert."``; "" for the whole model)."""
        return f"{self.root}." if self.root else ""

    def describe(self) -> str:
        """What was captured, for the summary's notes."""
        if not self.root:
            return "it"
        return f"its {self.root} ({self.home[0].__name__ if self.home else '?'}; the task head and loss stay Python)"

    def put_back(self, model: nn.Module, graph: fx.GraphModule) -> nn.Module:
        """The model running ``graph``: a captured root goes back in its place under its own class; the whole
        model's graph is returned as it is (its caller grafts it under the model's class)."""
        if not self.root:
            return graph
        set_submodule(model, self.root, graft(graph, self.home, self.accepted))  # type: ignore[arg-type]
        return model


def task_root(model: nn.Module) -> str:
    """What graph mode captures: a Hugging Face model's base model, so its task head and loss stay the model's own
    Python and calls can pass ``labels`` (a captured graph takes only the inputs it was captured with); else the
    whole model ("")."""
    base = getattr(model, "base_model", None) if hasattr(model, "base_model_prefix") else None
    if not isinstance(base, nn.Module) or base is model:
        return ""
    return next((name for name, m in model.named_modules() if m is base), "")


def _root_inputs(model: nn.Module, root: str, example_inputs: Batch) -> tuple[Batch, tuple | None, dict[str, Any]]:
    """``(the root's tensor inputs as a keyword batch, its own call, its other non-None inputs)`` from the probe
    forward pass (the whole model: ``example_inputs`` as they are)."""
    if not root:
        return example_inputs, None, {}
    args, kwargs = first_call_inputs(model, [root], example_inputs).get(root, ((), {}))
    forward = inspect.signature(model.get_submodule(root).forward)
    given = dict(forward.bind(*args, **kwargs).arguments)
    for name, param in forward.parameters.items():
        if param.kind is param.VAR_KEYWORD:
            given.update(given.pop(name, None) or {})
    tensors = {n: v for n, v in given.items() if isinstance(v, torch.Tensor)}
    others = {n: v for n, v in given.items() if v is not None and not isinstance(v, torch.Tensor)}
    return tensors, (args, kwargs), others


def capture_graph(model: nn.Module, root: str, targets: list[str], probe: Batch,
                  training: bool = False) -> tuple[RootCapture | None, str]:
    """``(capture, "")``: ``model``'s ``root`` ("" for the whole model; see :func:`task_root`) captured with
    ``torch.export`` from ``probe``, the ``targets`` inside it as ``call_module`` nodes (``export_graph``; in
    training mode for QAT); a root inside the model is put in its place as the plain graph module until
    :meth:`RootCapture.put_back` grafts it back under its class. ``(None, why not)`` where it cannot be captured."""
    module = model.get_submodule(root) if root else model
    prefix = f"{root}." if root else ""
    inside = [t[len(prefix):] for t in targets if t.startswith(prefix)]
    try:
        inputs, reference, others = _root_inputs(model, root, probe)
    except TypeError as err:
        return None, f"{root} takes its inputs in a way mixq cannot bind ({first_line(err)})"
    gm, why, left = export_graph(module, inputs, inside, training=training, reference=reference)
    if gm is None:
        return None, why
    left = {prefix + name: reason for name, reason in left.items()}
    if not root:
        return RootCapture("", gm, left_float=left), ""
    if not training:  # the exported program's module refuses train() (the model's .eval() reaches it now) and
        gm = plain_graph_module(gm, f"Captured{type(module).__name__}")  # checks its inputs in a pre-hook
    capture = RootCapture(root, gm, home_of(module), others, left)
    set_submodule(model, root, gm)
    return capture, ""
