"""Per-kernel costs on a runtime: how long one layer's float kernel and its int8 form take there, on this machine.

A ``Kernel`` is one layer's computation at one input shape (a convolution or a Linear, static or dynamic, with
its geometry); ``KernelCost`` is its measured float and int8 times. A runtime times kernels
(``mixq.export.backend.Runtime.time_kernel``: a one-op graph of each form, timed side by side); ``KernelCosts``
holds the results, read from and written to a small JSON cache so each shape is timed once per machine and runtime
version::

    ~/.cache/mixq/kernel_costs-<cpu signature>-<runtime>-<version>.json   ($XDG_CACHE_HOME honoured)

The file name carries the CPU signature (a hash of the CPU model and feature flags) and the runtime version, and
the file repeats them inside: a file written on another CPU or runtime version is never read. Writes are atomic
(a temporary file renamed over the old one). ``KernelCosts`` also takes a table directly (tests inject one).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mixq.quant.cpu import cpu_flags
from mixq.quant.modules.conv_args import integer_padding

CACHE_FORMAT = 3  # 2: a static kernel's float form is timed as exported between int8 neighbours; 3: in their layout
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kernel:
    """One layer's computation at one input shape: ``op`` ``"conv"`` or ``"linear"``, ``mode`` ``"static"``
    (integer activations in and out, as between int8 neighbours) or ``"dynamic"`` (float in and out, activations
    quantized per call), ``activation`` the static activation dtype. Convolutions carry their geometry; a Linear's
    ``input_shape`` is ``(tokens, in_features)``. ``float_input`` (static): the layer reads a float tensor no int8
    layer produced (the model's input, a float op's output), so its int8 form quantizes that input itself and its
    float form reads it as it is."""

    op: str
    mode: str
    input_shape: tuple[int, ...]
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    activation: str = "uint8"
    float_input: bool = False

    @property
    def key(self) -> str:
        """The shape signature the cache is keyed by."""
        shape = "x".join(map(str, self.input_shape))
        geometry = (f" k{_dims(self.kernel)} s{_dims(self.stride)} p{_dims(self.padding)} d{_dims(self.dilation)} "
                    f"g{self.groups}" if self.op == "conv" else "")
        act = f"/{self.activation}{'/float-in' if self.float_input else ''}" if self.mode == "static" else ""
        return f"{self.op}/{self.mode}{act} {shape} o{self.out_channels}{geometry}{' bias' if self.bias else ''}"

    @property
    def macs(self) -> int:
        """Multiply-accumulates per call (roughly: convolutions at stride 1 output size over the stride)."""
        n = self.input_shape[0] * self.out_channels * self.input_shape[1]
        if self.op == "linear":
            return n
        for size, stride, k in zip(self.input_shape[2:], self.stride, self.kernel, strict=False):
            n *= k * max(1, size // stride)
        return n // self.groups

    def describe(self) -> str:
        """A short human name: ``depthwise 3x3/2 conv 96ch``, ``1x1 conv 144->24``, ``linear 384->1536``."""
        cin = self.input_shape[1] if self.op == "conv" else self.input_shape[-1]
        if self.op == "linear":
            return f"linear {cin}->{self.out_channels}"
        size = "x".join(map(str, self.kernel)) + (f"/{max(self.stride)}" if max(self.stride) > 1 else "")
        if self.groups == cin == self.out_channels and cin > 1:
            return f"depthwise {size} conv {cin}ch"
        return f"{size} conv {cin}->{self.out_channels}" + (f" groups {self.groups}" if self.groups > 1 else "")


def _dims(values: tuple[int, ...]) -> str:
    return "x".join(map(str, values))


def kernel_of(layer: nn.Module, input_shape: tuple[int, ...], mode: str, activation: str = "uint8",
              float_input: bool = False) -> Kernel | None:
    """The ``Kernel`` a float ``layer`` (Conv1d/Conv2d or Linear) runs at ``input_shape`` in ``mode``
    (``float_input``: a static layer reading a float tensor, see ``Kernel``); None for other layers (they are not
    timed)."""
    float_input = float_input and mode == "static"
    padding = integer_padding(layer) if isinstance(layer, (nn.Conv1d, nn.Conv2d)) else None
    if padding is not None:
        return Kernel("conv", mode, tuple(input_shape), layer.out_channels, tuple(layer.kernel_size),
                      tuple(layer.stride), tuple(padding), tuple(layer.dilation), layer.groups,
                      layer.bias is not None, activation, float_input)
    if isinstance(layer, nn.Linear) and input_shape:
        tokens = 1
        for d in input_shape[:-1]:
            tokens *= d
        return Kernel("linear", mode, (tokens, layer.in_features), layer.out_features, bias=layer.bias is not None,
                      activation=activation, float_input=float_input)
    return None


@dataclass(frozen=True)
class KernelCost:
    """Milliseconds per call of a kernel's float form and its int8 form on one runtime."""

    float_ms: float
    int8_ms: float

    @property
    def ratio(self) -> float:
        """int8 time / float time: above 1, the int8 form is slower."""
        return self.int8_ms / self.float_ms


def cpu_signature() -> str:
    """A short hash of this CPU's model name and feature flags (what the runtimes' kernel choice depends on)."""
    text = platform.machine() + "|" + platform.processor() + "|" + _cpu_model() + "|" + " ".join(sorted(cpu_flags()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mixq`` (default ``~/.cache/mixq``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mixq"


def cache_path(runtime: str, version: str) -> Path:
    """The cache file of ``runtime`` at ``version`` on this CPU."""
    return cache_dir() / f"kernel_costs-{cpu_signature()}-{runtime}-{version}.json"


class KernelCosts:
    """Kernel key -> ``KernelCost`` for one runtime (and version) on this CPU, at ``threads`` intra-op threads.

    ``KernelCosts.cached(runtime, version)`` reads the cache file; ``KernelCosts(table)`` takes a table directly
    (``{kernel key: KernelCost or (float_ms, int8_ms)}``), e.g. in tests, and never writes one.
    """

    def __init__(self, table: Mapping[str, KernelCost | tuple[float, float]] | None = None, *,
                 path: Path | None = None, header: dict[str, Any] | None = None) -> None:
        self.table = {k: v if isinstance(v, KernelCost) else KernelCost(*v) for k, v in (table or {}).items()}
        self.path, self.header = path, header or {}

    @classmethod
    def cached(cls, runtime: str, version: str, threads: int = 1) -> KernelCosts:
        """The costs cached for ``runtime`` ``version`` on this CPU at ``threads`` (empty when none are)."""
        header = {"format": CACHE_FORMAT, "runtime": runtime, "version": version, "cpu": cpu_signature(),
                  "threads": threads}
        path = cache_path(runtime, version)
        return cls(_read(path, header), path=path, header=header)

    def get(self, kernel: Kernel) -> KernelCost | None:
        return self.table.get(kernel.key)

    def record(self, key: str, cost: KernelCost) -> None:
        """Add one measurement under ``key`` (e.g. a whole model's, ``mixq.quant.model_timing``) and save it."""
        self.table[key] = cost
        self.save()

    def measure(self, kernels: Iterable[Kernel], timer: Callable[[Kernel], KernelCost],
                budget_s: float = 20.0) -> list[Kernel]:
        """Time the ``kernels`` not in the table with ``timer`` (distinct shapes, largest first, until ``budget_s``
        seconds are spent) and save them to the cache file; returns the kernels left untimed."""
        missing = sorted({k.key: k for k in kernels if k.key not in self.table}.values(), key=lambda k: -k.macs)
        start, left = time.perf_counter(), []
        for kernel in missing:
            if time.perf_counter() - start > budget_s:
                left.append(kernel)
                continue
            self.table[kernel.key] = timer(kernel)
        if self.path is not None and len(left) < len(missing):
            self.save()
        return left

    def save(self) -> None:
        """Merge the table into the cache file (atomically; entries another process wrote meanwhile are kept)."""
        if self.path is None:
            return
        merged = {**_read(self.path, self.header), **self.table}
        data = {**self.header, "costs": {k: asdict(v) for k, v in sorted(merged.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as err:  # a read-only home: the costs are still used for this run
            log.warning("mixq: could not write the kernel cost cache %s: %s", self.path, err)


def _read(path: Path, header: dict[str, Any]) -> dict[str, KernelCost]:
    """The costs in ``path`` if its header matches ``header`` (CPU, runtime, version, threads), else none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if any(data.get(k) != v for k, v in header.items()):
            return {}
        return {k: KernelCost(float(v["float_ms"]), float(v["int8_ms"])) for k, v in data["costs"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
