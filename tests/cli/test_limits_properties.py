"""Property tests for the size guard: a shape is refused exactly when its estimate passes the memory available,
and the refusal never allocates (a CliError, one line, whatever the numbers)."""

from __future__ import annotations

import math
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.cli import limits
from mixq.cli.bench import Setting
from mixq.cli.errors import CliError

SETTINGS = settings(max_examples=200, deadline=None)
dims = st.lists(st.integers(1, 10**13), min_size=1, max_size=5).map(tuple)


@SETTINGS
@given(shapes=st.dictionaries(st.sampled_from(["input_ids", "attention_mask", "x"]), dims, min_size=1),
       available=st.integers(1, 1 << 45))
def test_bench_shapes_are_refused_exactly_past_memory(monkeypatch_session, shapes, available):
    monkeypatch_session.setattr(limits, "available_bytes", lambda: available)
    need = sum(math.prod(s) * 8 for s in shapes.values())
    setting = Setting("col", "col", shapes)
    if need > available:
        with pytest.raises(CliError, match="of memory, more than") as info:
            limits.check_bench_inputs([setting], [])
        assert "\n" not in str(info.value)
    else:
        limits.check_bench_inputs([setting], [])


@SETTINGS
@given(batch=st.integers(1, 10**12), sequence=st.integers(1, 10**7))
def test_token_shapes_grow_monotonically(monkeypatch_session, batch, sequence):
    config = types.SimpleNamespace(hidden_size=32, intermediate_size=64, vocab_size=100, num_attention_heads=2)
    monkeypatch_session.setattr(limits, "available_bytes", lambda: 1 << 34)
    try:
        limits.check_token_shape(config, batch, sequence, "--example-shape")
    except CliError:
        with pytest.raises(CliError):  # anything larger is refused too
            limits.check_token_shape(config, batch + 1, sequence, "--example-shape")


@pytest.fixture(scope="module")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as mp:
        yield mp
