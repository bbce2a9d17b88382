"""What the demo's steps share: settings, data, the trained model, and the results gathered so far."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from mixq.demo.evaluate import VariantResult
    from mixq.demo.training import TrainRun


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the run: ``quick`` is a smoke-test size (a narrower model, fewer epochs and timing runs)."""

    quick: bool = False
    seed: int = 0
    threads: int = 1
    mixed_precision: str = "auto"
    progress: bool = True
    runtime: str = "ort"  # the runtime the .onnx files run and are timed on (a mixq.export.backend.get_runtime name)

    @property
    def backend(self) -> Any:
        """The ``mixq.export.backend.Runtime`` called ``runtime``."""
        from mixq.export.backend import get_runtime

        return get_runtime(self.runtime)

    @property
    def channels(self) -> int:
        """Width of the CNN: 64 makes int8 weights dominate file size and kernel time; 16 is the smoke-test size."""
        return 16 if self.quick else 64

    @property
    def epochs(self) -> int:
        return 3 if self.quick else 12

    @property
    def latency_runs(self) -> int:
        return 20 if self.quick else 200

    @property
    def batches(self) -> tuple[int, ...]:
        """Batch sizes timed on ONNX Runtime."""
        return (1, 32)

    def to_dict(self) -> dict[str, Any]:
        return {"quick": self.quick, "seed": self.seed, "threads": self.threads, "runtime": self.runtime,
                "channels": self.channels,
                "mixed_precision": self.mixed_precision, "epochs": self.epochs,
                "latency_runs": self.latency_runs, "batches": list(self.batches)}


@dataclass
class DemoContext:
    """Shared state of one demo run; steps read what earlier steps filled in."""

    out: Path
    settings: DemoSettings
    data: dict[str, torch.Tensor]
    model: nn.Module | None = None  # the fp32-trained model every variant starts from
    training: list[TrainRun] = field(default_factory=list)
    results: list[VariantResult] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)  # what a variant leaves for a section (e.g. a report)

    @property
    def calib(self) -> list[torch.Tensor]:
        """Calibration batches: 5 x 100 training images."""
        return [self.data["x_train"][i:i + 100] for i in range(0, 500, 100)]

    @property
    def example(self) -> torch.Tensor:
        """Example inputs for export (the batch dimension is exported as dynamic)."""
        return self.data["x_train"][:2]

    @property
    def fp32(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("the fp32 model is trained by the demo's training step; run it first")
        return self.model


def environment(runtime: str = "ort") -> dict[str, str]:
    """Versions and machine the numbers were measured with (and ``runtime``'s package, when it is not ORT)."""
    import platform

    from mixq import __version__
    from mixq.export.backend import get_runtime

    versions = {"mixq": __version__, "torch": torch.__version__, "onnxruntime": get_runtime("ort").version(),
                "python": platform.python_version(), "machine": platform.machine(), "cpu_count": str(os.cpu_count())}
    backend = get_runtime(runtime)
    return versions if backend.package in versions else {**versions, backend.package: backend.version()}
