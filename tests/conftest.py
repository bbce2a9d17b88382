"""Shared fixtures: scikit-learn's bundled digits, and an MLP and a small residual CNN trained on them once."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from mixq.demo import train

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test runs one worker per core: one thread each, subprocesses too
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + x)


class DigitsCNN(nn.Module):
    """Conv+BN+ReLU stem, max pooling, a residual block, global average pooling and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.block = ResidualBlock(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.pool(self.stem(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


@pytest.fixture(scope="session")
def digits() -> dict[str, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}


@pytest.fixture(scope="session")
def trained_mlp(digits) -> nn.Module:
    torch.manual_seed(0)
    return train(DigitsMLP(), digits["x_train"], digits["y_train"], epochs=15)


@pytest.fixture(scope="session")
def trained_cnn(digits) -> nn.Module:
    torch.manual_seed(0)
    x = digits["x_train"].reshape(-1, 1, 8, 8)
    return train(DigitsCNN(), x, digits["y_train"], epochs=12)


@pytest.fixture
def accuracy() -> Callable[[nn.Module, torch.Tensor, torch.Tensor], float]:
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    return run


@pytest.fixture
def within_steps() -> Callable[..., float]:
    """Fraction of elements whose difference is at most ``steps`` quantization steps (plus float32 slack)."""

    def fraction(actual: np.ndarray, expected: np.ndarray, step: float, steps: float = 1.0) -> float:
        tol = steps * float(step) * (1 + 1e-5) + 1e-6
        return float(np.mean(np.abs(np.asarray(actual) - np.asarray(expected)) <= tol))

    return fraction


@pytest.fixture
def ort_run() -> Callable[..., list[np.ndarray]]:
    def run(path, *args: torch.Tensor, **kwargs: torch.Tensor) -> list[np.ndarray]:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if args:
            feeds = dict(zip(names, (a.numpy() for a in args), strict=True))
        else:
            feeds = {k: v.numpy() for k, v in kwargs.items()}
        return session.run(None, feeds)

    return run


@pytest.fixture(scope="session")
def reduce_range() -> bool:
    """True on x86 CPUs without VNNI, whose ONNX Runtime uint8 x int8 kernels saturate 16-bit partial sums of full
    8-bit weights (so the file computes what the simulation does only with 7-bit weights)."""
    from mixq.quant.cpu import int8_needs_reduce_range

    return int8_needs_reduce_range()


@pytest.fixture(autouse=True, scope="session")
def _kernel_cost_cache(tmp_path_factory):
    """Runtime-aware precision caches kernel timings under $XDG_CACHE_HOME: keep the suite's out of the user's
    cache (one cache for the whole session, subprocesses included)."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
