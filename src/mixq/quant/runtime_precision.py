"""Runtime-aware precision: a layer whose int8 kernel is slower than its float kernel on the chosen runtime stays
float.

Int8 does not pay everywhere: a 3-channel stem convolution, a depthwise convolution or a dynamic convolution
(``ConvInteger``) can run slower in int8 than in float, depending on the runtime and the CPU. When a config names a
``runtime`` (``QuantConfig.runtime``, e.g. ``"ort"``; ``mixq quantize`` names the output format's runtime), each
static or dynamic Conv/Linear is timed at the input shape it saw in the probe pass, in both forms, by that runtime
(``Runtime.time_kernel``), once per distinct shape and machine: the costs are cached
(``mixq.quant.runtime_costs``). A layer whose int8 form is slower stays float, and the summary says which, why and
by how much; a tie keeps int8, and so does a kernel too small to matter (both forms under ``MIN_MS``, where the
difference is call overhead and timing noise, so tiny models quantize the same on every run).
``runtime_aware=False`` keeps every layer at the precision the config asks for. Without a runtime nothing is
timed, so ``mixq.quantize(model, "static", ...)`` depends on its config alone.

Each kernel is timed as it runs between int8 neighbours: the int8 form with integer input and output, the float
form with the DequantizeLinear/QuantizeLinear (and, where the runtime keeps int8 layers in another layout, the
Transposes) it adds at an int8 boundary (``mixq.export.onnx.kernel_timing``). The layers found slower are then
checked together in the whole model (``mixq.quant.model_timing``): they stay float only if the file is faster so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

from mixq.quant.calibration import Batch
from mixq.quant.model_timing import faster_with_float, model_key, time_variants, too_large
from mixq.quant.modules import ObservedLayer
from mixq.quant.runtime_costs import Kernel, KernelCost, KernelCosts, kernel_of
from mixq.quant.spec import QuantConfig
from mixq.quant.stages import Prepared

BUDGET_S = 60.0  # at most this long timing kernels not cached yet, per quantize call
MIN_MS = 0.05  # kernels faster than this in both forms keep the config's precision
# int8 must be this much slower for a layer to be a candidate for float: a float layer among int8 ones costs what
# one-op timing leaves out and bit-exact simulation (its float kernel differs from PyTorch's in the last bits, which
# flips int8 codes downstream: EfficientNet-Lite0 with its stem float agreed with its file on 0.96 of the argmaxes)
SLOWER_MARGIN = 1.1
log = logging.getLogger(__name__)
CostTable = KernelCosts | Mapping[str, KernelCost | tuple[float, float]]


def layer_kernels(prepared: Prepared, config: QuantConfig) -> dict[str, Kernel]:
    """The kernel of each layer the config makes static or dynamic, at the shape it saw in the probe pass."""
    kernels = {}
    for name in prepared.targets:
        mode = config.choice(name).mode
        shape = prepared.input_shapes.get(name)
        if mode not in ("static", "dynamic") or shape is None:
            continue
        module = prepared.model.get_submodule(name)
        layer = module.layer if isinstance(module, ObservedLayer) else module
        float_input = isinstance(module, ObservedLayer) and not module.shared_input  # no int8 producer
        kernel = kernel_of(layer, shape, mode, config.activation.dtype, float_input)
        if kernel is not None:
            kernels[name] = kernel
    return kernels


def _busy() -> bool:
    """True when other processes kept every CPU busy (1-minute load average above the CPU count)."""
    try:
        return os.getloadavg()[0] > (os.cpu_count() or 1)
    except OSError:
        return False


def int8_slower(cost: KernelCost) -> bool:
    """True when the int8 form is clearly slower than the float one (by more than ``SLOWER_MARGIN``), and the
    kernel is large enough for that to matter."""
    return cost.ratio > SLOWER_MARGIN and max(cost.float_ms, cost.int8_ms) >= MIN_MS


def runtime_float_layers(prepared: Prepared, config: QuantConfig, costs: CostTable | None = None,
                         budget_s: float = BUDGET_S, example: Batch | None = None,
                         kept: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """``({layer: why it stays float}, summary notes)`` for ``config.runtime``; nothing without one or with
    ``runtime_aware=False``. ``costs`` (a ``KernelCosts`` or a ``{kernel key: (float_ms, int8_ms)}`` table) replaces
    the cached measurements, and nothing is timed: a kernel missing from it keeps the config's precision. With
    measured costs and an ``example`` batch, the layers found slower are checked in the whole model
    (``mixq.quant.model_timing``; ``kept``: layers float for other reasons, float in both files)."""
    if config.runtime is None or not config.runtime_aware:
        return {}, []
    from mixq.export.backend import get_runtime

    runtime = get_runtime(config.runtime)
    kernels = layer_kernels(prepared, config)
    if not kernels:
        return {}, []
    if costs is None and not runtime.times_kernels:
        return {}, [f"runtime-aware precision: {runtime.title} cannot time kernels, so every layer keeps the "
                    "precision the config asks for"]
    start = time.perf_counter()
    if costs is None:
        table = KernelCosts.cached(runtime.name, runtime.version())
        known = len(table.table)
        untimed = table.measure(kernels.values(), runtime.time_kernel, budget_s)
        measured = len(table.table) - known
        source = f"timed on this machine, cached in {table.path}"
    else:
        table = costs if isinstance(costs, KernelCosts) else KernelCosts(costs)
        untimed = [k for k in kernels.values() if table.get(k) is None]
        source, measured = "from the given cost table", 0
    slower = {}
    for name, kernel in kernels.items():
        cost = table.get(kernel)
        if cost is not None and int8_slower(cost):
            slower[name] = (f"int8 is slower on {runtime.title} here: {kernel.describe()} {kernel.mode} int8 "
                            f"{cost.int8_ms:.3f} ms vs float {cost.float_ms:.3f} ms ({cost.ratio:.2f}x); "
                            "runtime_aware=False forces int8")
    timed = len({k.key for k in kernels.values()}) - len({k.key for k in untimed})
    checked = ""
    if slower and costs is None and example is not None:
        slower, checked = _check_in_model(prepared, config, kernels, slower, table, example, kept or {},
                                          budget_s - (time.perf_counter() - start))
    notes = [f"runtime-aware precision for {runtime.title}: {len(slower)} of {len(kernels)} int8 layers stay float "
             f"where their int8 kernel is slower ({timed} distinct kernel shapes, {source}){checked}"
             + ("; a float layer among int8 ones rounds differently in each runtime, so the file matches the "
                "simulation to float rounding there, not bit for bit" if slower else "")]
    if measured and _busy():  # logged, not in the summary: a rerun from the cache gives the same summary
        log.warning("mixq: runtime-aware precision timed %d kernels while this machine was busy (load average %.1f "
                    "on %d CPUs), so they may be noise; delete %s to time them again on a quiet machine", measured,
                    os.getloadavg()[0], os.cpu_count() or 1, table.path)
    if untimed:
        notes.append(f"runtime-aware precision: {len(untimed)} kernel shapes were not timed (time budget {budget_s:g} "
                     "s, or missing from the table); their layers keep the config's precision")
    return slower, notes


def _check_in_model(prepared: Prepared, config: QuantConfig, kernels: Mapping[str, Kernel], slower: dict[str, str],
                    table: KernelCosts, example: Batch, kept: Mapping[str, str],
                    budget_s: float) -> tuple[dict[str, str], str]:
    """``slower`` if the whole file is faster with those layers float (``model_timing``), else none; and the
    clause the summary note gets about that check."""
    key = model_key(kernels, slower)
    cost = table.table.get(key)
    if cost is None:
        if budget_s <= 0:
            return slower, "; not checked in the whole model (time budget spent on kernels)"
        if (count := too_large(prepared)) is not None:
            return slower, (f"; not checked in the whole model ({count:,} parameters: two more exports "
                            "would take minutes)")
        try:
            cost = time_variants(prepared, kept, slower, example, config.runtime)
        except Exception as err:  # the one-op verdict stands; the note says why it was not checked
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            return slower, f"; not checked in the whole model (its file could not be timed: {reason})"
        table.record(key, cost)
    them, layers = ("it", "layer") if len(slower) == 1 else ("them", "layers")
    times = f"{cost.float_ms:.2f} ms with {them} float vs {cost.int8_ms:.2f} ms all int8, 1 thread"
    if faster_with_float(cost):
        return slower, f"; the whole file is faster so ({times})"
    names = ", ".join(sorted(slower)[:4]) + (", ..." if len(slower) > 4 else "")
    return {}, (f"; {len(slower)} {layers} ({names}) timed slower in int8 alone, but the whole file was not faster "
                f"with {them} float ({times}), so {'it stays' if len(slower) == 1 else 'they stay'} int8")
