"""One interface for every backend: a ``Format`` writes and inspects one kind of file, a ``Runtime`` runs it.

A format (``"onnx"``, ``"tflite"``) owns a file suffix, ``export`` and ``inspect``; a runtime (``"ort"``,
``"litert"``) names the format it runs and owns sessions, inputs, timing and the check that the file computes
what mixq's PyTorch simulation does. Several runtimes may run one format (ONNX Runtime and OpenVINO both run
``.onnx``); the first registered for a format is its default. Each backend folder registers its classes with
``@register_format`` / ``@register_runtime`` in a module listed in ``BUILTIN``, imported on the first lookup, so
importing mixq imports no backend library. The CLI, the report, autoquantize and the demo look backends up here
instead of branching on names or suffixes.

A runtime may take session options (OpenVINO's ``precision``): ``get_runtime("openvino:f32")`` is the runtime with
them set, and everything that takes a runtime (``mixq bench --runtime``, autoquantize's ``runtime=``) takes that
string.

Example::

    rt = runtime_for("model_int8.tflite")          # LiteRT
    session = rt.session("model_int8.tflite", threads=2)
    outputs = rt.run(session, rt.feeds(session, [x.numpy()]))
"""

from __future__ import annotations

import copy
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

    from mixq.quant.runtime_costs import Kernel, KernelCost

# a new backend adds its module here; a format's first registered runtime is its default
BUILTIN = ("mixq.export.onnx.backend", "mixq.export.tflite.backend", "mixq.export.openvino.backend")
_FORMATS: dict[str, Format] = {}
_RUNTIMES: dict[str, Runtime] = {}
F = TypeVar("F", bound=type["Format"])
R = TypeVar("R", bound=type["Runtime"])


class Inspection(Protocol):
    """What ``Format.inspect`` returns: ``str()`` is the terminal report, ``to_dict()`` its JSON form."""

    def to_dict(self) -> dict[str, Any]: ...


class Session(Protocol):
    """What ``Runtime.session`` returns: ``run(None, feeds)`` runs the file once (ONNX Runtime's call shape)."""

    def run(self, output_names: None, feeds: Any) -> Any: ...


class Format(ABC):
    """A file format mixq writes: ``name``, ``suffix``, what to call it, and how to export and inspect it.

    ``options`` lists the keyword options ``export`` takes beyond model, inputs and path; ``extra`` is the pip
    extra it needs (None: always installed).
    """

    name: ClassVar[str]
    suffix: ClassVar[str]
    title: ClassVar[str]
    noun: ClassVar[str]  # "an ONNX model": for "cannot load x as an ONNX model"
    file_hint: ClassVar[str]  # how to get a file of this format, for error hints
    options: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str | None] = None

    def available(self) -> bool:
        """Whether the libraries this format needs are installed (checked without importing them)."""
        return True

    @abstractmethod
    def export(self, model: Any, example_inputs: Any, path: str | os.PathLike, **options: Any) -> Path:
        """Write ``model`` to ``path`` (checked, atomic); ``ExportError`` when it cannot be written. Every format
        takes ``runtime=`` (a runtime name): the runtime the file is written for, which may choose among equivalent
        forms of a graph (None: the model's quantization runtime where it runs this format, else the default)."""

    @abstractmethod
    def inspect(self, path: str | os.PathLike) -> Inspection:
        """What ``path`` holds and what its runtime runs of it."""

    def __repr__(self) -> str:
        return f"<format {self.name} ({self.suffix})>"


class Runtime(ABC):
    """A runtime that runs files of ``format``: sessions, feeds, outputs, timing and the simulation check.

    ``named_inputs``: files take inputs by name with symbolic axes (shapes are planned across files and fed to each,
    e.g. ONNX); otherwise a file has its own fixed signature, at most with a resizable batch (LiteRT).
    ``options``: the session options it takes, each with its values (the first is the default); ``chosen``: those
    set on this instance (see :meth:`configured`), which ``session`` uses.
    """

    name: ClassVar[str]
    format: ClassVar[str]
    title: ClassVar[str]
    package: ClassVar[str]  # the distribution whose version the runtime reports
    named_inputs: ClassVar[bool] = True
    install_hint: ClassVar[str | None] = None
    short: ClassVar[str | None] = None  # a short name for table headers ("ORT"); None: ``title``
    options: ClassVar[dict[str, tuple[str, ...]]] = {}
    chosen: Mapping[str, str] = {}
    times_kernels: ClassVar[bool] = False  # implements ``time_kernel`` (runtime-aware precision)
    float_dtypes: ClassVar[tuple[str, ...]] = ("float32",)  # float precisions it runs fast on this CPU, best first
    # folds a per-channel Mul right before a quantize into the quantization at no cost (OpenVINO merges it into its
    # FakeQuantize), so static mode's default SmoothQuant also smooths inside int8 layers for it; ONNX Runtime runs
    # that Mul as a separate pass (1.10x the whole MiniLM file's time at batch 32)
    fuses_input_scale: ClassVar[bool] = False
    # runs a Linear with integer weights and a float output as a kernel that quantizes its input per row at run
    # time (LiteRT: XNNPACK's qd8 FULLY_CONNECTED kernels): a static Linear whose output stays float (graph mode: no
    # integer kernel reads it), not on the calibrated grid (ONNX Runtime's MatMulIntegerToFloat), and a weight-only
    # Linear, whose activations ONNX Runtime's MatMulNBits keeps float; a model quantized for it simulates that
    # rounding (``mixq.quant.kernels.qlinear_rows``, ``matmul_nbits_rows``)
    rounds_float_output_rows: ClassVar[bool] = False
    # static mode's default SmoothQuant smooths every group alpha "auto" finds worth it on a transformer (inside int8
    # layers too), not only groups with outlier channels: LiteRT's hybrid kernels round each input row on its own
    # range, which one outlier channel coarsens for the whole row (all-MiniLM-L6-v2: file vs simulation cos 0.99775
    # -> 0.99905, simulation vs fp32 0.99767 -> 0.99802, for 1.03x the file's time on XNNPACK at batch 1)
    smooths_every_group: ClassVar[bool] = False

    def floors_masked_softmax(self) -> bool:
        """Whether files written for this runtime floor masked Softmax inputs (``mixq.export.onnx.softmax``): its
        Softmax runs rows whose ``exp`` underflows markedly slower on this machine. Outputs are unchanged."""
        return False

    def affects(self, mode: str) -> bool:
        """Whether quantizing for this runtime changes layers of ``mode``: static and dynamic layers follow its kernel
        speeds (runtime-aware precision), weight-only layers its arithmetic where it rounds their input per row."""
        return mode in ("static", "dynamic") or (mode == "weight_only" and self.rounds_float_output_rows)

    def stored_scales(self, scales: torch.Tensor) -> torch.Tensor:
        """A weight-only layer's scales (float32 ``[out_features, groups]``) as this runtime's files hold them, which
        a model quantized for it computes with: unchanged by default."""
        return scales

    @property
    def display(self) -> str:
        """The short name and the chosen option values, for headers and notes: ``"ORT"``, ``"OpenVINO f32"``."""
        return " ".join([self.short or self.title, *self.chosen.values()])

    @property
    def label(self) -> str:
        """``name``, then the chosen option values: ``"openvino:f32"`` (what :func:`get_runtime` parses)."""
        return self.name + "".join(f":{v}" for v in self.chosen.values())

    def configured(self, **chosen: str) -> Runtime:
        """This runtime with session options set (``precision="f32"``); ``ValueError`` naming a bad one."""
        for key, value in chosen.items():
            if key not in self.options:
                takes = f"takes {', '.join(self.options)}" if self.options else "takes none"
                raise ValueError(f"runtime {self.name!r} has no option {key!r}; it {takes}")
            if value not in self.options[key]:
                raise ValueError(f"runtime {self.name!r} option {key} must be one of "
                                 f"{', '.join(self.options[key])}, not {value!r}")
        runtime = copy.copy(self)
        runtime.chosen = {**self.chosen, **chosen}
        return runtime

    def variants(self) -> list[Runtime]:
        """The settings ``mixq bench --runtime all`` times side by side (OpenVINO: f32 and its default)."""
        return [self]

    def precision(self, session: Any) -> str | None:
        """The float precision ``session`` computes in when the runtime picks it (OpenVINO), else None."""
        return None

    def kernel_counts(self, session: Any) -> dict[str, int] | None:
        """``{"<kernel> <precision>": count}`` for the compute kernels ``session`` compiled to, where the runtime
        reports them (OpenVINO: ``"FullyConnected u8"``); None where the file's inspection already says it (ORT's
        optimised graph, see ``Format.inspect``)."""
        return None

    def available(self) -> bool:
        """Whether the runtime is installed (checked without importing it)."""
        return True

    def version(self) -> str:
        """The installed version of ``package`` (read from its metadata, without importing it)."""
        from importlib.metadata import version

        return version(self.package)

    @abstractmethod
    def session(self, path: str | os.PathLike, threads: int | None = None) -> Session:
        """Load ``path`` to run on the CPU with ``threads`` intra-op threads (None: the runtime's choice) and the
        ``chosen`` options."""

    @abstractmethod
    def input_names(self, session: Any) -> list[str]:
        """The session's inputs, in the file's order."""

    @abstractmethod
    def feeds(self, session: Any, arrays: Mapping[str, Any] | Sequence[Any]) -> Any:
        """``arrays`` as ``session.run`` takes them: by name when a mapping names every input, else by position."""

    @abstractmethod
    def run(self, session: Any, feeds: Any) -> list[np.ndarray]:
        """Run once; the outputs as float arrays, in the file's order."""

    def batch_feeds(self, session: Any, batch: int) -> Any:
        """Synthetic inputs of the file's own signature at batch size ``batch`` (runtimes without
        ``named_inputs``; named-input files get inputs planned across files by ``mixq.report.feeds``)."""
        raise NotImplementedError(f"{self.title} files take inputs planned by name (mixq.report.feeds)")

    def measure(self, jobs: Mapping[Any, tuple[Any, Any]], runs: int = 50, warmup: int = 5,
                rounds: int = 5) -> dict[Any, Any]:
        """Time ``{key: (session, feeds)}`` side by side in interleaved rounds (``report.measure_interleaved``)."""
        from mixq.report.latency import measure_interleaved

        return measure_interleaved(jobs, runs, warmup, rounds)

    def time_kernel(self, kernel: Kernel, threads: int = 1) -> KernelCost:
        """Time one layer's float kernel against the int8 form this runtime's format lowers it to (each a one-op
        file at ``kernel``'s shape, run side by side); runtimes with ``times_kernels`` implement it, and
        runtime-aware precision (``mixq.quant.runtime_precision``) leaves layers as configured on the others."""
        raise NotImplementedError(f"{self.title} cannot time kernels (runtime-aware precision is not available)")

    def example_feeds(self, session: Any, example_inputs: Any) -> Any:
        """A PyTorch example batch (a tensor, a tuple of them, or keyword tensors) as ``session.run`` takes it."""
        from mixq.quant.calibration import batch_args

        args, kwargs = batch_args(example_inputs)
        given = {k: v.detach().numpy() for k, v in kwargs.items()} or [a.detach().numpy() for a in args]
        return self.feeds(session, given)

    def check(self, model: Any, path: str | os.PathLike, example_inputs: Any) -> float:
        """Simulation vs runtime: the largest ``|runtime - PyTorch|`` over the outputs on ``example_inputs``."""
        import torch

        from mixq.quant.calibration import batch_args

        args, kwargs = batch_args(example_inputs)
        with torch.no_grad():
            expected = model(*args, **kwargs)
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        session = self.session(path, threads=1)
        got = self.run(session, self.example_feeds(session, example_inputs))
        return max(float(np.max(np.abs(np.asarray(g, np.float64) - e.detach().double().numpy())))
                   for g, e in zip(got, expected, strict=True))

    def __repr__(self) -> str:
        return f"<runtime {self.name} ({self.format})>"


def ordered(names: Sequence[str], arrays: Mapping[str, Any] | Sequence[Any]) -> list[Any]:
    """``arrays`` in the order of ``names``: by name when a mapping holds every name, else by position."""
    if isinstance(arrays, Mapping):
        return [arrays[n] for n in names] if set(names) <= set(arrays) else list(arrays.values())
    return list(arrays)


def named_feeds(names: Sequence[str], arrays: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
    """``arrays`` (tensors or arrays) as numpy arrays keyed by ``names`` (see :func:`ordered`): the feeds of a
    runtime whose sessions take a dict by input name (ONNX Runtime, OpenVINO)."""
    values = [v.detach().numpy() if hasattr(v, "detach") else np.asarray(v) for v in ordered(names, arrays)]
    return dict(zip(names, values, strict=False))


def register_format(cls: F) -> F:
    """Class decorator: make format ``cls`` known by its ``name`` and ``suffix``."""
    _FORMATS[cls.name] = cls()
    return cls


def register_runtime(cls: R) -> R:
    """Class decorator: make runtime ``cls`` known by its ``name`` (the first one for a format is its default)."""
    _RUNTIMES[cls.name] = cls()
    return cls


def _load() -> None:
    for module in BUILTIN:
        importlib.import_module(module)


def _lookup(table: dict[str, Any], kind: str, name: str) -> Any:
    _load()
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(table))}")
    return table[name]


def get_format(name: str) -> Format:
    """The format called ``name`` (``"onnx"``, ``"tflite"``); ``ValueError`` listing the known ones otherwise."""
    return _lookup(_FORMATS, "format", name)


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name`` (``"ort"``, ``"litert"``, ``"openvino"``), with options after colons: a value
    (``"openvino:f32"``) or ``key=value`` (``"openvino:precision=f32"``). ``ValueError`` in one line otherwise."""
    base, *given = name.split(":")
    runtime: Runtime = _lookup(_RUNTIMES, "runtime", base)
    chosen = {}
    for text in given:
        key, sep, value = text.rpartition("=")
        if not sep:  # a bare value: the option that has it
            key = next((k for k, values in runtime.options.items() if text in values), "")
            if not key:
                known = ", ".join(v for values in runtime.options.values() for v in values) or "none"
                raise ValueError(f"runtime {base!r} has no option value {text!r}; its values: {known}")
        chosen[key] = value
    return runtime.configured(**chosen) if chosen else runtime


def formats() -> list[Format]:
    """Every registered format, in registration order."""
    _load()
    return list(_FORMATS.values())


def runtimes() -> list[Runtime]:
    """Every registered runtime, in registration order."""
    _load()
    return list(_RUNTIMES.values())


def format_runtimes(fmt: str) -> list[Runtime]:
    """The runtimes that run ``fmt`` files (a format name), its default first."""
    return [r for r in runtimes() if r.format == fmt]


def file_runtime(model: Any, fmt: str, runtime: str | None = None) -> Runtime:
    """The runtime a ``fmt`` file of ``model`` is written for: ``runtime`` (``ValueError`` unless it runs ``fmt``
    files), else the runtime ``model`` was quantized for (``mixq_config.runtime``) where it runs ``fmt``, else the
    format's default runtime."""
    if runtime is not None:
        chosen = get_runtime(runtime)
        if chosen.format != fmt:
            raise ValueError(f"runtime {runtime!r} runs {chosen.format} files, not {fmt} files; pass one of "
                             f"{', '.join(r.name for r in format_runtimes(fmt))}")
        return chosen
    quantized_for = getattr(getattr(model, "mixq_config", None), "runtime", None)
    if quantized_for and (chosen := get_runtime(quantized_for)).format == fmt:
        return chosen
    return format_runtimes(fmt)[0]


def format_for(path: str | os.PathLike, default: str | None = "onnx") -> Format:
    """The format of ``path``, from its suffix; ``default`` for other suffixes (None: ``ValueError``)."""
    suffix = Path(path).suffix.lower()
    found = next((f for f in formats() if f.suffix == suffix), None)
    if found is not None:
        return found
    if default is None:
        known = ", ".join(f.suffix for f in formats())
        raise ValueError(f"{str(path)!r} has no known model suffix; known: {known}")
    return get_format(default)


def runtime_for(path: str | os.PathLike, default: str | None = "onnx", runtime: str | None = None) -> Runtime:
    """The runtime to run ``path`` with: ``runtime`` (a :func:`get_runtime` name), else its format's default (see
    :func:`format_for`). ``ValueError`` in one line when ``runtime`` cannot run the file's format."""
    fmt = format_for(path, default)
    if runtime is None:
        return format_runtimes(fmt.name)[0]
    chosen = get_runtime(runtime)
    if chosen.format != fmt.name:
        able = ", ".join(r.name for r in format_runtimes(fmt.name))
        raise ValueError(f"runtime {chosen.name!r} runs {get_format(chosen.format).suffix} files, not "
                         f"{Path(path).name}; {fmt.suffix} files run on: {able}")
    return chosen


def runtimes_for(path: str | os.PathLike, default: str | None = "onnx") -> list[Runtime]:
    """Every installed runtime of ``path``'s format, each setting of :meth:`Runtime.variants` (``--runtime all``)."""
    fmt = format_for(path, default)
    return [v for r in format_runtimes(fmt.name) if r.available() for v in r.variants()]
