"""Observers: expected ranges on known data, errors, state_dict round-trips and the factory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixq.quant.observers import (
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    NoDataError,
    PercentileObserver,
    make_observer,
)
from mixq.quant.primitives import choose_qparams, fake_quantize
from mixq.quant.spec import DEFAULT_ACTIVATION, DEFAULT_WEIGHT, ObserverSpec, QuantSpec

SYM = QuantSpec("int8", granularity="per_tensor")
ACT = DEFAULT_ACTIVATION
NAMES = ["minmax", "moving_average", "percentile", "mse", "entropy"]
SPECS = [pytest.param(SYM, id="int8-sym"), pytest.param(ACT, id="uint8-affine")]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    return choose_qparams(lo, hi, spec.torch_dtype, symmetric=spec.symmetric, bits=spec.bits,
                          narrow=spec.narrow_range and spec.symmetric)


def _quant_mse(scale: torch.Tensor, zp: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> float:
    y = fake_quantize(x, scale, zp, qmin=spec.qmin, qmax=spec.qmax)
    return float(((y - x) ** 2).mean())


def test_minmax_range_is_exact():
    obs = MinMaxObserver(ACT)
    for lo, hi in [(-1.5, 2.0), (-0.5, 3.25), (-2.75, 1.0)]:
        obs(torch.tensor([lo, 0.1, hi]))
    assert [float(v) for v in obs.calculate_range()] == [-2.75, 3.25]
    expected = _qparams(torch.tensor(-2.75), torch.tensor(3.25), ACT)
    assert all(torch.equal(a, b) for a, b in zip(obs.calculate_qparams(), expected, strict=True))


def test_moving_average_follows_the_ema_formula():
    c = 0.25
    obs = MovingAverageMinMaxObserver(ACT, averaging_constant=c)
    ranges = [(-1.0, 2.0), (-3.0, 1.0), (-0.5, 6.0), (-2.0, 2.0)]
    lo, hi = torch.tensor(ranges[0][0]), torch.tensor(ranges[0][1])  # the first batch initialises
    for k, (b_lo, b_hi) in enumerate(ranges):
        obs(torch.tensor([b_lo, 0.0, b_hi]))
        if k:
            lo, hi = lo + c * (b_lo - lo), hi + c * (b_hi - hi)
    assert torch.equal(obs.min_val, lo) and torch.equal(obs.max_val, hi)
    assert abs(float(hi) - (((2.0 * 0.75 + 0.25) * 0.75 + 1.5) * 0.75 + 0.5)) < 1e-6


@pytest.mark.parametrize("cls", [MinMaxObserver, MovingAverageMinMaxObserver])
def test_per_channel_observers_give_one_scale_per_channel(cls):
    w = torch.randn(6, 10, generator=_gen()) * torch.arange(1, 7).reshape(6, 1)
    obs = cls(DEFAULT_WEIGHT, axis=0)
    obs(w)
    scale, zp = obs.calculate_qparams()
    assert scale.shape == (6,) and zp.shape == (6,) and zp.dtype == torch.int8
    expected, _ = _qparams(w.amin(dim=1), w.amax(dim=1), DEFAULT_WEIGHT)
    assert torch.equal(scale, expected)
    assert torch.equal(zp, torch.zeros(6, dtype=torch.int8))


def test_histogram_widening_keeps_counts_exact():
    obs = PercentileObserver(ACT, bins=256)
    gen = _gen(1)
    batches = [torch.randn(5000, generator=gen) * s + m for s, m in [(0.1, 0.0), (1.0, 2.0), (3.0, -4.0), (0.5, 0)]]
    for b in batches:
        obs(b)
    data = torch.cat(batches).double().numpy()
    counts, _ = np.histogram(data, bins=obs.bin_edges().numpy())
    np.testing.assert_array_equal(obs.histogram.numpy(), counts)
    assert obs.bin_edges()[0] <= data.min() and obs.bin_edges()[-1] >= data.max()
    used = (data.max() - data.min()) / float(obs.bin_width)
    assert used >= obs.bins / 2 - 1  # widening by whole-bin merges keeps at least about half the bins in use


def test_histogram_starts_from_a_constant_batch():
    obs = PercentileObserver(ACT, percentile=99.0)
    obs(torch.zeros(100))
    x = torch.rand(10000, generator=_gen(2)) * 4.0
    obs(x)
    assert float(obs.histogram.sum()) == 10100
    ref = np.percentile(torch.cat([torch.zeros(100), x]).numpy(), 99.0)
    assert abs(float(obs.calculate_range()[1]) - ref) <= float(obs.bin_width)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_is_within_one_bin_of_numpy(p):
    gen = _gen(3)
    batches = [torch.randn(50000, generator=gen) * s for s in (0.5, 1.0, 2.0)]  # ranges grow: re-binning
    obs = make_observer(ObserverSpec("percentile", percentile=p), SYM)
    for b in batches:
        obs(b)
    data = torch.cat(batches).numpy()
    lo, hi = obs.calculate_range()
    width = float(obs.bin_width)
    assert abs(float(hi) - np.percentile(data, p)) <= width
    assert abs(float(lo) - np.percentile(data, 100 - p)) <= width
    assert float(hi) < data.max() and float(lo) > data.min()


def test_percentile_keeps_the_true_min_of_non_negative_data():
    x = torch.rand(100000, generator=_gen(4)) + 0.25
    obs = PercentileObserver(ACT, percentile=99.0)
    obs(x)
    lo, hi = obs.calculate_range()
    assert float(lo) == float(x.min())
    assert abs(float(hi) - np.percentile(x.numpy(), 99.0)) <= float(obs.bin_width)


@pytest.mark.parametrize("spec", SPECS)
def test_mse_beats_minmax_on_data_with_outliers(spec):
    x = torch.randn(100000, generator=_gen(5))
    x[:8] = torch.tensor([40.0, -35.0, 30.0, 38.0, 25.0, -20.0, 33.0, 39.0])
    obs, ref = MSEObserver(spec), MinMaxObserver(spec)
    obs(x)
    ref(x)
    assert float(obs.calculate_range()[1]) < float(x.max())  # the outliers are clipped
    mse_err = _quant_mse(*obs.calculate_qparams(), spec, x)
    minmax_err = _quant_mse(*ref.calculate_qparams(), spec, x)
    assert mse_err < 0.9 * minmax_err


def test_mse_keeps_the_full_range_of_uniform_data():
    x = torch.rand(100000, generator=_gen(6)) * 2 - 1  # no tails: clipping only hurts
    obs = MSEObserver(SYM)
    obs(x)
    scale, _ = obs.calculate_qparams()
    full_scale, _ = _qparams(x.min(), x.max(), SYM)
    assert float(scale) >= 0.97 * float(full_scale)


@pytest.mark.parametrize(("spec", "signed"), [pytest.param(SYM, True, id="int8-signed"),
                                              pytest.param(ACT, True, id="uint8-signed"),
                                              pytest.param(ACT, False, id="uint8-relu")])
def test_entropy_clips_heavy_tails_but_covers_the_bulk(spec, signed):
    torch.manual_seed(7)
    x = torch.distributions.StudentT(3.0).sample((100000,))
    x = x if signed else x.clamp(min=0)
    obs = EntropyObserver(spec)
    for chunk in x.chunk(4):
        obs(chunk)
    lo, hi = (float(v) for v in obs.calculate_range())
    data = x.numpy()
    assert hi < 0.6 * data.max()
    assert hi > np.percentile(data, 99.9)
    if signed:
        assert np.percentile(data, 0.1) > lo > 0.6 * data.min()
    else:
        assert lo == 0.0


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", NAMES)
def test_no_data_raises(name, spec):
    obs = make_observer(ObserverSpec(name), spec, name="layer1")
    with pytest.raises(NoDataError, match="layer1"):
        obs.calculate_qparams()
    obs(torch.empty(0))  # an empty batch is not data
    with pytest.raises(NoDataError):
        obs.calculate_qparams()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_input_raises(name, bad):
    obs = make_observer(ObserverSpec(name), ACT, name="fc")
    with pytest.raises(ValueError, match="non-finite"):
        obs(torch.tensor([0.0, bad, 1.0]))
    assert not obs.has_data


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips(name, spec):
    gen = _gen(8)
    obs = make_observer(ObserverSpec(name), spec)
    for scale in (1.0, 3.0, 0.5):
        obs(torch.randn(4000, generator=gen) * scale + 0.3)
    fresh = make_observer(ObserverSpec(name), spec)
    fresh.load_state_dict(obs.state_dict())
    assert fresh.has_data
    for a, b in zip(fresh.calculate_qparams(), obs.calculate_qparams(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["minmax", "moving_average"])
def test_per_channel_state_dict_round_trips(name):
    obs = make_observer(ObserverSpec(name), DEFAULT_WEIGHT, axis=0)
    obs(torch.randn(5, 7, generator=_gen(9)))
    obs(torch.randn(5, 7, generator=_gen(10)))
    fresh = make_observer(ObserverSpec(name), DEFAULT_WEIGHT, axis=0)
    fresh.load_state_dict(obs.state_dict())
    for a, b in zip(fresh.calculate_qparams(), obs.calculate_qparams(), strict=True):
        assert a.shape == (5,) and torch.equal(a, b)


@pytest.mark.parametrize("name", ["percentile", "mse", "entropy"])
def test_histogram_observers_reject_per_channel(name):
    with pytest.raises(ValueError, match="per-tensor only"):
        make_observer(ObserverSpec(name), DEFAULT_WEIGHT, axis=0)


def test_make_observer_passes_the_knobs():
    perc = make_observer(ObserverSpec("percentile", percentile=99.5, bins=512), ACT)
    assert isinstance(perc, PercentileObserver) and perc.percentile == 99.5 and perc.bins == 512
    ema = make_observer(ObserverSpec("moving_average", averaging_constant=0.2), ACT, axis=1)
    assert isinstance(ema, MovingAverageMinMaxObserver) and ema.averaging_constant == 0.2 and ema.axis == 1
    assert isinstance(make_observer(ObserverSpec("mse", bins=64), ACT), MSEObserver)
    assert make_observer(ObserverSpec("entropy"), ACT).histogram.shape == (2048,)
    with pytest.raises(ValueError, match="unknown observer"):
        ObserverSpec("kl")


def test_forward_returns_its_input_unchanged():
    x = torch.randn(3, 4, requires_grad=True)
    for name in NAMES:
        assert make_observer(ObserverSpec(name), ACT)(x) is x


def test_entropy_falls_back_to_minmax_when_the_histogram_is_coarser_than_the_grid():
    x = torch.distributions.StudentT(3.0).sample((20000,))
    obs = EntropyObserver(ACT, bins=128)  # 128 bins cannot resolve 256 levels
    obs(x)
    assert [float(v) for v in obs.calculate_range()] == [float(x.min()), float(x.max())]


def _relu6_mostly_zeros(zeros: float, n: int = 200_000) -> torch.Tensor:
    """ReLU6-like outputs: a share ``zeros`` of exact zeros, the rest a half-normal that saturates at 6 now and then
    (as EfficientNet-Lite0's depthwise convolutions give)."""
    g = _gen(11)
    x = (torch.randn(n, generator=g).abs() * 1.5).clamp(max=6.0)
    x[torch.rand(n, generator=g) < zeros] = 0.0
    return x


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("zeros", [0.3, 0.7, 0.9])
def test_entropy_keeps_the_range_of_relu6_outputs_that_are_mostly_zeros(zeros, spec):
    # exact zeros are exact on every grid; counted as spread over their bin they used to pull the range to the
    # narrowest candidate (0.75 of 6 here), clipping a sixth of the values
    x = _relu6_mostly_zeros(zeros)
    obs = EntropyObserver(spec)
    for chunk in x.chunk(4):
        obs(chunk)
    lo, hi = (float(v) for v in obs.calculate_range())
    nonzero = x[x > 0].numpy()
    assert lo == 0.0 and hi > np.percentile(nonzero, 99.9)
    assert obs.clipped_share(*obs.calculate_qparams()) < 1e-3


def test_zero_count_survives_widening_and_leaves_the_nonzero_histogram_exact():
    obs = PercentileObserver(ACT, bins=64)
    batches = [torch.tensor([0.0, 0.0, 0.5, 1.0]), torch.tensor([0.0, -3.0, 7.0, 0.25]), torch.zeros(5)]
    for b in batches:
        obs(b)
    x = torch.cat(batches)
    assert float(obs.zero_count) == float((x == 0).sum())
    edges = obs.bin_edges()
    nonzero = x[x != 0].to(torch.float64)
    expected = torch.histogram(nonzero, bins=edges.clone()).hist
    assert torch.equal(obs.nonzero_histogram(), expected)


@pytest.mark.parametrize("spec", SPECS)
def test_clipped_share_matches_the_share_of_saturated_values(spec):
    x = torch.randn(50_000, generator=_gen(12))
    obs = PercentileObserver(spec)
    obs(x)
    for lo, hi in [(-1.0, 1.0), (-2.0, 0.5), (0.0, 3.0), (float(x.min()), float(x.max()))]:
        scale, zp = _qparams(torch.tensor(lo), torch.tensor(hi), spec)
        grid_lo, grid_hi = (spec.qmin - float(zp) - 0.5) * float(scale), (spec.qmax - float(zp) + 0.5) * float(scale)
        exact = float(((x < grid_lo) | (x > grid_hi)).double().mean())
        assert obs.clipped_share(scale, zp) == pytest.approx(exact, abs=2e-4)
    assert MinMaxObserver(spec).clipped_share(torch.tensor(1.0), torch.tensor(0)) is None
