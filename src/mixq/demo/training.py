"""Training the demo model in fp32 and with mixed precision, recording time, losses and the loss-scale history."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

BATCH_SIZE = 64
LEARNING_RATE = 1e-2


@dataclass
class TrainRun:
    """One training run: its precision policy, wall time, per-step loss and loss scale, and test accuracy."""

    label: str
    precision: str
    policy: str
    device: str
    epochs: int
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    epoch_accuracy: list[float] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Test accuracy after the last epoch."""
        return self.epoch_accuracy[-1] if self.epoch_accuracy else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy, "steps": len(self.losses)}


@contextlib.contextmanager
def cpu_training_threads() -> Iterator[None]:
    """One intra-op thread with denormals flushed to zero, restored afterwards.

    For a model this small extra threads only add synchronisation, and denormal floats early in training slowed
    epochs 10-100x, erratically, in worker threads (which do not inherit the calling thread's flush setting).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if flushed:
            torch.set_flush_denormal(False)


def mixed_precision_choice() -> str:
    """``"fp16"`` (with dynamic loss scaling) where CUDA exists, else ``"bf16"`` (no loss scaling needed)."""
    return "fp16" if torch.cuda.is_available() else "bf16"


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (in eval mode, float32 inputs) on ``x``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = (model(x.to(device)).argmax(1).cpu() == y).float().mean().item()
    model.train(was_training)
    return correct


def _epoch(model: nn.Module, mp: Any, schedule: Any, x: torch.Tensor, y: torch.Tensor, run: TrainRun) -> None:
    model.train()
    perm = torch.randperm(len(x))
    for i in range(0, len(x), BATCH_SIZE):
        idx = perm[i:i + BATCH_SIZE]
        with mp.autocast():
            loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
        mp.backward(loss)
        mp.step()
        mp.zero_grad()
        schedule.step()
        run.losses.append(float(loss.detach()))
        run.scales.append(mp.scale)


def train_run(model: nn.Module, data: dict[str, torch.Tensor], precision: str, epochs: int, *, label: str,
              lr: float = LEARNING_RATE, seed: int = 0, progress: bool = True) -> tuple[nn.Module, TrainRun]:
    """Train ``model`` with Adam (one-cycle learning rate) under ``mixq.MixedPrecision(precision=...)``.

    Returns the model (on CPU, eval mode) and the run's record. ``precision="fp32"`` is the float32 baseline.
    Also fine-tunes: pass a prepared QAT model with a smaller ``lr``.
    """
    with cpu_training_threads():
        return _train(model, data, precision, epochs, label, lr, seed, progress)


def _train(model: nn.Module, data: dict[str, torch.Tensor], precision: str, epochs: int, label: str, lr: float,
           seed: int, progress: bool) -> tuple[nn.Module, TrainRun]:
    from mixq.amp import MixedPrecision

    device = torch.device("cuda" if precision == "fp16" and torch.cuda.is_available() else "cpu")
    model = model.to(device)
    x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
    _warm_up(model, precision, x_train[:BATCH_SIZE], y_train[:BATCH_SIZE])
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    mp = MixedPrecision(model, opt, precision=precision)
    steps = epochs * -(-len(x_train) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    run = TrainRun(label, precision, str(mp.policy), device.type, epochs)
    bar = tqdm(range(epochs), desc=f"training {label}", unit="epoch", leave=False, disable=not progress)
    for _ in bar:
        start = time.perf_counter()
        _epoch(model, mp, schedule, x_train, y_train, run)
        if device.type == "cuda":
            torch.cuda.synchronize()
        run.seconds += time.perf_counter() - start
        run.epoch_accuracy.append(accuracy(model, data["x_test"], data["y_test"]))
        bar.set_postfix(loss=f"{run.losses[-1]:.3f}", acc=f"{run.accuracy:.3f}")
    mp.remove()
    run.skipped_steps = mp.stats.skipped_steps
    return model.cpu().eval(), run


def _warm_up(model: nn.Module, precision: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """One untimed forward/backward on a copy, so one-off kernel set-up is not billed to the timed run."""
    from mixq.amp import MixedPrecision

    clone = copy.deepcopy(model)
    mp = MixedPrecision(clone, torch.optim.SGD(clone.parameters(), lr=0.0), precision=precision)
    with mp.autocast():
        loss = nn.functional.cross_entropy(clone(x).float(), y)
    mp.backward(loss)
    mp.remove()
