"""Side-by-side timing: every job warmed up, then interleaved rounds; a failing job is reported, the others timed."""

from __future__ import annotations

import numpy as np
import pytest

from mixq.report import Latency, measure_interleaved
from mixq.report.latency import probe, runs_within


class Recorder:
    """A session that logs its calls in a shared list and fails on call ``fail_at`` (if given)."""

    def __init__(self, name: str, log: list[str], fail_at: int | None = None) -> None:
        self.name, self.log, self.fail_at, self.calls = name, log, fail_at, 0

    def run(self, _outputs: None, _feeds: dict) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError(f"{self.name} broke\nsecond line")
        self.log.append(self.name)


def test_rounds_interleave_every_job_and_split_the_runs():
    log: list[str] = []
    feeds = {"x": np.zeros((4, 3), np.float32)}
    jobs = {k: (Recorder(k, log), feeds) for k in ("a", "b", "c")}
    out = measure_interleaved(jobs, runs=7, warmup=2, rounds=3)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, per job
    timed = log[6:]  # each job's calls in a round follow one untimed settling call
    assert timed == ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3 + ["b"] * 3 + [
        "c"] * 3  # 3 + 2 + 2 = 7 timed runs per job
    assert list(out) == ["a", "b", "c"]
    assert all(isinstance(v, Latency) and v.runs == 7 and v.batch == 4 and 0 <= v.median_ms <= v.p90_ms
               for v in out.values())


@pytest.mark.parametrize("fail_at", [1, 4], ids=["in warm-up", "while timed"])
def test_a_failing_job_is_reported_and_the_others_are_timed(fail_at):
    log: list[str] = []
    jobs = {k: (Recorder(k, log, fail_at if k == "b" else None), {}) for k in ("a", "b")}
    out = measure_interleaved(jobs, runs=4, warmup=1, rounds=2)
    assert isinstance(out["b"], RuntimeError) and "b broke" in str(out["b"])
    assert isinstance(out["a"], Latency) and out["a"].runs == 4
    assert log.count("a") == 1 + 4 + (fail_at == 4)  # one settling call, in the round b was still timed in


def test_runs_must_be_positive():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        measure_interleaved({}, runs=0)


def test_tick_follows_every_call_warm_up_included():
    log: list[str] = []
    ticks: list[int] = []
    jobs = {k: (Recorder(k, log), {}) for k in ("a", "b")}
    measure_interleaved(jobs, runs=4, warmup=2, rounds=2, tick=lambda: ticks.append(len(log)))
    # 2 jobs x (2 warm-up + 4 timed), one tick after each; the settling call before each job's calls in a round
    # (one per job and round) is not ticked
    assert len(ticks) == 12 and ticks[:4] == [1, 2, 3, 4] and ticks[4:6] == [6, 7] and len(log) == 16


def test_probe_times_one_call_each_and_reports_failures():
    log: list[str] = []
    jobs = {k: (Recorder(k, log, 1 if k == "b" else None), {}) for k in ("a", "b")}
    ticks: list[None] = []
    out = probe(jobs, tick=lambda: ticks.append(None))
    assert log == ["a"] and len(ticks) == 2
    assert isinstance(out["a"], float) and out["a"] >= 0 and isinstance(out["b"], RuntimeError)


@pytest.mark.parametrize("seconds,per_run,expected", [
    (10.0, 0.125, 50),  # 80 runs fit: capped at 50
    (4.0, 0.125, 32),
    (0.25, 0.125, 3),  # not even the floor fits: the floor
    (-1.0, 0.125, 3),  # the budget already spent
    (1.0, 0.0, 50),  # nothing left to time
])
def test_runs_within_fits_the_budget_between_floor_and_cap(seconds, per_run, expected):
    assert runs_within(seconds, per_run, floor=3, cap=50) == expected


def test_runs_within_needs_an_ordered_floor_and_cap():
    with pytest.raises(ValueError, match="floor <= cap"):
        runs_within(1.0, 0.1, floor=5, cap=3)


def test_runs_picked_after_the_warm_up_from_its_last_calls():
    log: list[str] = []
    jobs = {k: (Recorder(k, log), {}) for k in ("a", "b")}
    seen: list[dict] = []

    def pick(warm: dict) -> int:
        seen.append(warm)
        assert log == ["a", "a", "b", "b"]  # after every warm-up call, before any timed one
        return 3

    out = measure_interleaved(jobs, runs=pick, warmup=2, rounds=2)
    assert len(seen) == 1 and set(seen[0]) == {"a", "b"} and all(v >= 0 for v in seen[0].values())
    assert all(v.runs == 3 for v in out.values()) and log.count("a") == 2 + 3 + 2  # warm-up, timed, settling
    with pytest.raises(ValueError, match="runs must be >= 1, got 0"):
        measure_interleaved(jobs, runs=lambda warm: 0, warmup=0)
