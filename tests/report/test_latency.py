"""Side-by-side timing: every job warmed up, then interleaved rounds; a failing job is reported, the others timed."""

from __future__ import annotations

import numpy as np
import pytest

from mixq.report import Latency, measure_interleaved


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
    timed = log[6:]
    assert timed == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a", "a", "b", "b", "c", "c"] * 2  # 3 + 2 + 2 = 7 runs
    assert list(out) == ["a", "b", "c"]
    assert all(isinstance(v, Latency) and v.runs == 7 and v.batch == 4 and 0 <= v.median_ms <= v.p90_ms
               for v in out.values())


@pytest.mark.parametrize("fail_at", [1, 4], ids=["in warm-up", "while timed"])
def test_a_failing_job_is_reported_and_the_others_are_timed(fail_at):
    log: list[str] = []
    jobs = {k: (Recorder(k, log, fail_at if k == "b" else None), {}) for k in ("a", "b")}
    out = measure_interleaved(jobs, runs=4, warmup=1, rounds=2)
    assert isinstance(out["b"], RuntimeError) and "b broke" in str(out["b"])
    assert isinstance(out["a"], Latency) and out["a"].runs == 4 and log.count("a") == 5


def test_runs_must_be_positive():
    with pytest.raises(ValueError, match="runs must be >= 1"):
        measure_interleaved({}, runs=0)
