"""The precision ladder each layer climbs during the search, from fastest to safest, and configs built from it.

Static int8 with the configured observer, then static int8 with the observers that observer declares as its
autoquantize ladder (``capabilities.ladder``, e.g. percentile and MSE: outlier-robust ranges), then dynamic int8
(activation ranges measured per call), float16 weights, and finally fp32. For ``objective="latency"`` the ladder
skips rungs that ONNX Runtime does not run faster than fp32 on CPU: float16 (its weights are cast back to float32;
a runtime that runs float16 fast says so in ``Runtime.float_dtypes``) and dynamic convolutions (ConvInteger is
several times slower than Conv). Graph-mode adds and MatMuls of two activations only have the static rungs and
fp32.
"""

from __future__ import annotations

import dataclasses
import glob
from dataclasses import dataclass

from mixq.quant.observers import observer_class
from mixq.quant.spec import LayerOverride, ObserverSpec, QuantConfig


@dataclass(frozen=True)
class Rung:
    """One precision a layer may take: a mode (``"fp32"`` keeps it float) and, for static, an observer."""

    mode: str
    observer: ObserverSpec | None = None

    @property
    def label(self) -> str:
        if self.mode == "static":
            return f"int8 {self.observer.name}" if self.observer else "int8"
        return {"dynamic": "dynamic int8"}.get(self.mode, self.mode)

    def override(self, name: str) -> LayerOverride:
        """An override selecting exactly module ``name`` (fnmatch special characters escaped)."""
        return LayerOverride(glob.escape(name), self.mode, self.observer if self.mode == "static" else None)


FP32 = Rung("fp32")


def ladder(kind: str, objective: str, base: ObserverSpec, fast_floats: tuple[str, ...] = ("float32",)) -> list[Rung]:
    """Rungs for a layer of type ``kind`` (``"Linear"``, ``"Conv2d"``, ``"add"``, ...), fastest first.
    ``fast_floats``: the float precisions the timing runtime runs fast (``Runtime.float_dtypes``); with the latency
    objective the float16 rung is offered only where ``"float16"`` is one of them."""
    rungs = [Rung("static", base)]
    fallbacks = observer_class(base.name).capabilities.ladder
    rungs += [Rung("static", ObserverSpec(name, bins=base.bins)) for name in fallbacks]
    if kind not in ("add", "matmul"):  # graph-mode binary ops: static or float only
        if kind == "Linear" or objective != "latency":
            rungs.append(Rung("dynamic"))
        if objective != "latency" or "float16" in fast_floats:
            rungs.append(Rung("fp16"))
    return rungs + [FP32]


def build_config(base: QuantConfig, ladders: dict[str, list[Rung]], assignment: dict[str, int]) -> QuantConfig:
    """``base`` with one override per layer whose rung is not the first of its ladder (module order kept)."""
    overrides = tuple(ladders[name][i].override(name) for name, i in assignment.items() if i > 0)
    return dataclasses.replace(base, overrides=base.overrides + overrides)


def only(base: QuantConfig, name: str, rung: Rung) -> QuantConfig:
    """``base`` with every layer fp32 except ``name`` at ``rung``: that layer's error alone."""
    return dataclasses.replace(base, overrides=base.overrides + (LayerOverride("*", "fp32"), rung.override(name)))


def everything_float(base: QuantConfig) -> QuantConfig:
    """``base`` with every layer fp32 (the fp32 reference, BatchNorm folded as in the quantized candidates)."""
    return dataclasses.replace(base, overrides=base.overrides + (LayerOverride("*", "fp32"),))
