"""count_bins and the histogram observers against a float64 reference: values on, just below and just above the
float64 edges land in the bin that holds them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixq.quant.observers import EntropyObserver, MSEObserver, PercentileObserver
from mixq.quant.observers.binning import (
    _CHUNK,
    _margin,
    ceil_float32,
    count_bins,
    uniform_edges,
)
from mixq.quant.spec import DEFAULT_ACTIVATION, QuantSpec


def _reference(x: torch.Tensor, start: float, width: float, bins: int) -> tuple[np.ndarray, int]:
    """Bin ``i`` holds ``edges[i] <= x < edges[i + 1]`` compared in float64; the end bins take the rest."""
    edges = uniform_edges(start, width, bins).numpy()
    index = np.searchsorted(edges, x.to(torch.float64).numpy(), side="right") - 1
    return np.bincount(np.clip(index, 0, bins - 1), minlength=bins), int((x == 0).sum())


def _adversarial(start: float, width: float, bins: int, seed: int, extra: int = 0) -> torch.Tensor:
    """Every edge rounded to float32 both ways and its float32 neighbours, random values across the range,
    both zeros, and ``extra`` more random values."""
    edges = uniform_edges(start, width, bins)
    up = ceil_float32(edges)
    down = edges.to(torch.float32)
    inf = torch.tensor(float("inf"))
    near = torch.cat([up, down, torch.nextafter(up, -inf), torch.nextafter(down, inf)])
    gen = torch.Generator().manual_seed(seed)
    spread = (start + width * bins * torch.rand(bins + extra, generator=gen, dtype=torch.float64)).float()
    x = torch.cat([near, spread, torch.tensor([0.0, -0.0])])
    return x[torch.randperm(x.numel(), generator=gen)]


def _check(x: torch.Tensor, start: float, width: float, bins: int) -> None:
    counts, zeros = count_bins(x, start, width, bins, float(x.min()), float(x.max()))
    expected, expected_zeros = _reference(x, start, width, bins)
    np.testing.assert_array_equal(counts.numpy(), expected)
    assert zeros == expected_zeros


@settings(max_examples=200, deadline=None)
@given(start=st.floats(-1e4, 1e4), log_width=st.floats(-12.0, 2.0), bins=st.integers(16, 3000),
       seed=st.integers(0, 2**16), zero_edge=st.booleans())
def test_every_value_lands_in_the_float64_bin_that_holds_it(start, log_width, bins, seed, zero_edge):
    width = 10.0**log_width
    if zero_edge:  # a power-of-two width and a start a whole number of widths below 0: one edge is exactly 0
        width = 2.0 ** round(log_width * 3.32)
        start = -width * (seed % bins)
    _check(_adversarial(start, width, bins, seed), start, width, bins)


@pytest.mark.parametrize(("start", "width", "path"), [
    pytest.param(-3.0, 6.0 / 2048, torch.float32, id="float32-index"),
    pytest.param(1000.0, 1e-4, torch.float64, id="narrow-range-far-from-0-float64-index"),
    pytest.param(1.0, 1e-15, None, id="narrower-than-float32-bucketize"),
])
def test_each_index_path_is_exact(start, width, path):
    bins = 2048
    x = _adversarial(start, width, bins, seed=1)
    amax = float(x.abs().max())
    uses = [d for d in (torch.float32, torch.float64) if _margin(start, width, bins, amax, d) < 0.25]
    assert (uses[0] if uses else None) == path  # the case exercises the path it names
    _check(x, start, width, bins)


def test_counts_add_up_across_chunks_and_zeros_of_both_signs_count():
    x = _adversarial(-1.0, 2.0 / 512, 512, seed=2, extra=3 * _CHUNK)
    x[:1000] = 0.0
    x[1000:1500] = -0.0
    _check(x, -1.0, 2.0 / 512, 512)


def test_values_beyond_the_ends_go_to_the_end_bins():
    x = torch.tensor([-5.0, -1.0, 0.25, 1.0, 9.0])  # bins [0, 0.5), ..., [7.5, 8)
    counts, zeros = count_bins(x, 0.0, 0.5, 16, -5.0, 9.0)
    assert counts[0] == 3 and counts[2] == 1 and counts[15] == 1 and int(counts.sum()) == 5 and zeros == 0


def test_histogram_observer_counts_values_on_its_edges_exactly():
    obs = PercentileObserver(DEFAULT_ACTIVATION, bins=256)
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(5000, generator=gen) * s + m for s, m in [(0.1, 0.0), (2.0, 1.0)]]  # widens once
    for b in batches:
        obs(b)
    start, width = float(obs.hist_min), float(obs.bin_width)
    edges = _adversarial(start, width, 256, seed=4)
    batches.append(edges[(edges >= obs.min_val) & (edges <= obs.max_val)])  # inside the range: no widening
    obs(batches[-1])
    assert (float(obs.hist_min), float(obs.bin_width)) == (start, width)
    x = torch.cat(batches)
    expected, zeros = _reference(x, start, width, 256)
    np.testing.assert_array_equal(obs.histogram.numpy(), expected)
    assert float(obs.zero_count) == zeros
    nonzero, _ = _reference(x[x != 0], start, width, 256)
    np.testing.assert_array_equal(obs.nonzero_histogram().numpy(), nonzero)


def test_small_tensors_take_the_search_and_count_the_same():
    x = _adversarial(-2.0, 4.0 / 64, 64, seed=5)[:300]  # at most _SEARCHED values: one binary search each
    _check(x, -2.0, 4.0 / 64, 64)


def test_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="float32"):
        count_bins(torch.zeros(4, dtype=torch.float64), 0.0, 1.0, 16, 0.0, 0.0)


@pytest.fixture
def threads(request):
    """Run the test with ``request.param`` torch threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("start", [pytest.param(-1.0, id="signed"), pytest.param(0.0, id="from-0-zeros-apart")])
def test_counts_do_not_depend_on_how_many_threads_count_them(threads, start):
    bins, width = 512, 2.0 / 512
    x = _adversarial(start, width, bins, seed=6, extra=3 * _CHUNK)
    x = x[x >= start]  # from 0: no value below the first edge, so zeros are counted at index 0 (lo = start = 0)
    x[:5000] = 0.0
    x[5000:6000] = -0.0
    _check(x, start, width, bins)


@pytest.mark.parametrize("size", [pytest.param(300, id="searched"), pytest.param(5000, id="one-chunk"),
                                  pytest.param(3 * _CHUNK, id="chunks")])
def test_nonnegative_data_from_0_count_their_zeros_exactly(size):
    bins, width = 256, 6.0 / 256
    x = _adversarial(0.0, width, bins, seed=7, extra=size)
    x = x[x >= 0.0][:size]
    x[: size // 3] = 0.0  # ReLU outputs: many zeros of both signs, and the least positive floats beside them
    x[size // 3: size // 2] = -0.0
    x[size // 2: size // 2 + 10] = torch.finfo(torch.float32).smallest_normal * 2.0**-23
    _check(x[torch.randperm(size, generator=torch.Generator().manual_seed(8))], 0.0, width, bins)


class _ReferenceHistogram:
    """The histogram observers' statistics computed the plain way: the documented widening (whole old bins merged)
    and each batch binned by a float64 search of the edges."""

    def __init__(self, bins: int) -> None:
        self.bins, self.hist, self.zeros, self.lo, self.hi = bins, np.zeros(bins), 0, np.inf, -np.inf

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        n = self.bins
        if self.lo == np.inf:
            self.start, self.width = lo, (hi - lo) / n
        elif lo < self.start or hi > self.start + n * self.width:
            shift = max(0, math.ceil((self.start - lo) / self.width))
            new_start = self.start - shift * self.width
            end = self.start + n * self.width
            factor = max(1, math.ceil((max(hi, end) - new_start) / (n * self.width)), math.ceil((n + shift) / n))
            index = np.minimum((np.arange(n) + shift) // factor, n - 1)
            self.hist = np.bincount(index, weights=self.hist, minlength=n)
            self.start, self.width = new_start, self.width * factor
        counts, zeros = _reference(x, self.start, self.width, n)
        self.hist, self.zeros = self.hist + counts, self.zeros + zeros
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"num_batches": torch.tensor(1), "histogram": torch.from_numpy(self.hist),
                "hist_min": torch.tensor(self.start, dtype=torch.float64),
                "bin_width": torch.tensor(self.width, dtype=torch.float64), "min_val": torch.tensor(self.lo),
                "max_val": torch.tensor(self.hi), "zero_count": torch.tensor(float(self.zeros), dtype=torch.float64)}


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("cls", [PercentileObserver, MSEObserver, EntropyObserver])
@pytest.mark.parametrize("relu", [pytest.param(True, id="relu6-outputs"), pytest.param(False, id="signed")])
def test_observer_statistics_and_ranges_equal_a_plain_reference(threads, cls, relu):
    spec = DEFAULT_ACTIVATION if relu else QuantSpec("int8", granularity="per_tensor")
    obs, ref = cls(spec, bins=512), _ReferenceHistogram(512)
    gen = torch.Generator().manual_seed(9)
    for scale, size in [(0.5, 300), (1.0, _CHUNK + 5000), (3.0, 2 * _CHUNK), (2.0, 40000)]:  # ranges grow
        x = torch.randn(size, generator=gen) * scale
        x = x.clamp(0.0, 6.0) if relu else x
        obs(x)
        ref.observe(x)
        np.testing.assert_array_equal(obs.histogram.numpy(), ref.hist)
    with pytest.raises(ValueError, match="non-finite"):
        obs(torch.tensor([1.0, float("inf")]))  # refused before it touches the statistics
    planned = cls(spec, bins=512)
    planned.load_state_dict(ref.state_dict())
    for key, value in planned.state_dict().items():
        assert key == "num_batches" or torch.equal(obs.state_dict()[key], value), key
    for got, expected in zip(obs.calculate_qparams(), planned.calculate_qparams(), strict=True):
        assert torch.equal(got, expected)
