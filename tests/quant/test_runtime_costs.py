"""The per-kernel cost table: kernel signatures, the JSON cache (round trip, invalidation, atomic merge) and the
time budget of measuring."""

from __future__ import annotations

import json
import time

import pytest
from torch import nn

from mixq.quant import runtime_costs
from mixq.quant.runtime_costs import Kernel, KernelCost, KernelCosts, cache_path, kernel_of


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path


def _conv(groups: int = 1, kernel: int = 3) -> Kernel:
    k = kernel_of(nn.Conv2d(8, 8, kernel, padding=kernel // 2, groups=groups), (2, 8, 16, 16), "static")
    assert k is not None
    return k


def test_kernel_keys_tell_shapes_modes_and_geometry_apart():
    keys = {_conv().key, _conv(groups=8).key, _conv(kernel=1).key,
            kernel_of(nn.Conv2d(8, 8, 3, padding=1), (2, 8, 16, 16), "dynamic").key,
            kernel_of(nn.Conv2d(8, 8, 3, padding=1), (4, 8, 16, 16), "static").key,
            kernel_of(nn.Conv2d(8, 8, 3, padding=1), (2, 8, 16, 16), "static", "int8").key}
    assert len(keys) == 6
    assert _conv(groups=8).describe() == "depthwise 3x3 conv 8ch"
    assert _conv(kernel=1).describe() == "1x1 conv 8->8"


def test_a_linear_kernel_counts_tokens_and_other_layers_have_none():
    k = kernel_of(nn.Linear(16, 32), (2, 5, 16), "dynamic")
    assert k is not None and k.input_shape == (10, 16) and k.describe() == "linear 16->32"
    assert kernel_of(nn.LayerNorm(16), (2, 16), "static") is None
    assert kernel_of(nn.Conv2d(8, 8, 2, padding="same"), (2, 8, 16, 16), "static") is None  # asymmetric


def test_costs_round_trip_through_the_cache_file(cache_home):
    kernel = _conv()
    costs = KernelCosts.cached("ort", "9.9")
    assert costs.get(kernel) is None and costs.path.parent == cache_home / "mixq"
    assert costs.measure([kernel, kernel], lambda k: KernelCost(1.0, 1.5)) == []
    again = KernelCosts.cached("ort", "9.9")
    assert again.get(kernel) == KernelCost(1.0, 1.5) and again.get(kernel).ratio == 1.5
    assert not list(costs.path.parent.glob("*.tmp"))  # written atomically: no temporary left behind


@pytest.mark.parametrize("change", ["version", "threads", "cpu"])
def test_a_cache_from_another_runtime_version_thread_count_or_cpu_is_not_read(cache_home, monkeypatch, change):
    kernel = _conv()
    KernelCosts.cached("ort", "9.9").measure([kernel], lambda k: KernelCost(1.0, 2.0))
    if change == "cpu":  # same file name, another CPU's signature inside: ignored
        path = cache_path("ort", "9.9")
        data = json.loads(path.read_text())
        path.write_text(json.dumps({**data, "cpu": "another"}))
    version, threads = ("9.10", 1) if change == "version" else ("9.9", 2 if change == "threads" else 1)
    assert KernelCosts.cached("ort", version, threads).get(kernel) is None


def test_the_cache_file_name_carries_the_cpu_signature(cache_home, monkeypatch):
    first = cache_path("ort", "1.0")
    monkeypatch.setattr(runtime_costs, "cpu_signature", lambda: "feedbeef0000")
    assert cache_path("ort", "1.0") != first and "feedbeef0000" in cache_path("ort", "1.0").name


def test_saving_merges_with_what_another_process_wrote(cache_home):
    a, b = _conv(), _conv(groups=8)
    first, second = KernelCosts.cached("ort", "9.9"), KernelCosts.cached("ort", "9.9")
    first.measure([a], lambda k: KernelCost(1.0, 0.5))
    second.measure([b], lambda k: KernelCost(1.0, 2.0))
    merged = KernelCosts.cached("ort", "9.9")
    assert merged.get(a) == KernelCost(1.0, 0.5) and merged.get(b) == KernelCost(1.0, 2.0)


def test_a_corrupt_cache_file_is_ignored(cache_home):
    path = cache_path("ort", "9.9")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert KernelCosts.cached("ort", "9.9").table == {}


def test_measuring_times_the_largest_kernels_first_and_stops_at_the_time_budget(cache_home):
    kernels = [_conv(kernel=1), _conv(groups=8), _conv()]  # the 3x3 conv has by far the most multiply-adds
    timed = []

    def slow_timer(kernel: Kernel) -> KernelCost:
        timed.append(kernel)
        time.sleep(0.05)
        return KernelCost(1.0, 1.0)

    left = KernelCosts.cached("ort", "9.9").measure(kernels, slow_timer, budget_s=0.01)
    assert timed == [_conv()] and {k.key for k in left} == {k.key for k in kernels[:2]}


def test_an_injected_table_takes_pairs_and_is_never_written(cache_home):
    costs = KernelCosts({_conv().key: (2.0, 1.0)})
    assert costs.get(_conv()).ratio == 0.5
    costs.save()
    assert not (cache_home / "mixq").exists()
