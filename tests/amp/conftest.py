"""Shared fixtures for the mixed-precision tests: the digits split as the ``Digits`` record the helpers take."""

from __future__ import annotations

import pytest
import torch
from amp_helpers import Digits


@pytest.fixture(scope="session")
def digits() -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    i = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return Digits(f(x_tr), i(y_tr), f(x_te), i(y_te))
