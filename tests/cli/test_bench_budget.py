"""``mixq bench --budget``: the timed runs per file and column fit a time (3 to 50, the floor even when it does not
fit, said in one note), ``--runs`` sets them exactly instead, and a progress bar shows only on a terminal."""

from __future__ import annotations

import io
import json
import sys
import time

import pytest

from tests.cli.one_line import assert_one_line_error


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch

    import mixq

    root = tmp_path_factory.mktemp("budget")
    torch.manual_seed(0)
    for name in ("a.onnx", "b.onnx"):
        mixq.export_onnx(torch.nn.Linear(8, 4), torch.randn(1, 8), root / name)
    return root


def test_budget_picks_the_runs_and_the_json_records_them(mixq_main, files):
    start = time.monotonic()
    code, out, err = mixq_main("bench", "a.onnx", "b.onnx", "--batch", "1,4", "--budget", "5", "--json", "b.json",
                               cwd=files)
    assert code == 0, err
    assert time.monotonic() - start < 30  # generous: the command fits 5 s
    data = json.loads((files / "b.json").read_text())
    assert data["budget_s"] == 5 and set(data["runs"]) == {"1", "4"} and 0 <= data["seconds"] < 30
    assert data["over_budget"] is False
    for key, runs in data["runs"].items():
        assert 3 <= runs <= 50
        assert all(r["latency"][key]["runs"] == runs for r in data["results"])
    assert f"timed runs per file: b1 {data['runs']['1']}, b4 {data['runs']['4']} (as many as fit --budget 5 s)" in out
    assert "note:" not in err


def test_default_budget_is_recorded(mixq_main, files):
    code, out, err = mixq_main("bench", "a.onnx", "--batch", "1", "--json", "d.json", cwd=files)
    assert code == 0, err
    data = json.loads((files / "d.json").read_text())
    assert data["budget_s"] == 60 and 3 <= data["runs"]["1"] <= 50


def test_the_floor_runs_when_it_does_not_fit_and_says_so(mixq_main, files):
    code, out, err = mixq_main("bench", "a.onnx", "b.onnx", "--batch", "1,4", "--budget", "1e-6", "--json", "f.json",
                               cwd=files)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("mixq: note: ")]
    assert len(notes) == 1 and "the fewest timed runs (3 per file and column)" in notes[0]
    assert notes[0].endswith("s more, past --budget 1e-06 s; timing them anyway")
    data = json.loads((files / "f.json").read_text())
    assert data["runs"] == {"1": 3, "4": 3} and data["over_budget"] is True
    assert "timed runs per file: b1 3, b4 3 (the fewest; they did not fit --budget 1e-06 s)" in out
    assert all(r["latency"]["4"]["runs"] == 3 for r in data["results"])


def test_runs_set_the_count_without_a_budget(mixq_main, files):
    code, out, err = mixq_main("bench", "a.onnx", "--batch", "1,4", "--runs", "7", "--json", "r.json", cwd=files)
    assert code == 0, err
    data = json.loads((files / "r.json").read_text())
    assert data["budget_s"] is None and data["runs"] == {"1": 7, "4": 7} and data["over_budget"] is False
    assert "timed runs per file: b1 7, b4 7, after 5 warm-up; took " in out and "--budget" not in out


@pytest.mark.parametrize("args,message", [
    (["--budget", "0"], "--budget must be a positive number of seconds, not 0"),
    (["--budget", "-5"], "--budget must be a positive number of seconds, not -5"),
    (["--budget", "nan"], "--budget must be a positive number of seconds, not nan"),
    (["--budget", "inf"], "--budget must be a positive number of seconds, not inf"),
    (["--budget", "10", "--runs", "5"], "--runs sets the timed runs and --budget picks them to fit a time; give one"),
], ids=["zero", "negative", "nan", "infinite", "with runs"])
def test_bad_budgets_are_refused_in_one_line(mixq_main, files, args, message):
    assert_one_line_error(mixq_main, files, ["bench", "a.onnx", "--json", "bad.json", *args], message, "bad.json")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("hide", [False, True], ids=["terminal", "--no-progress"])
def test_progress_bar_on_a_terminal_only(mixq_main, files, monkeypatch, hide):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code, out, _ = mixq_main("bench", "a.onnx", "--batch", "1", "--runs", "3", *(["--no-progress"] if hide else []),
                             cwd=files)
    assert code == 0
    shown = terminal.getvalue()
    assert ("benchmarking" not in shown) if hide else ("benchmarking" in shown and "call" in shown), shown


def test_no_progress_bar_when_stderr_is_not_a_terminal(mixq_main, files):
    code, _, err = mixq_main("bench", "a.onnx", "--batch", "1", "--runs", "3", cwd=files)
    assert code == 0 and "benchmarking" not in err


class Slow:
    """An ONNX Runtime session that takes at least 50 ms a call."""

    def __init__(self, session: object) -> None:
        self._session = session

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)

    def run(self, outputs: object, feeds: object) -> object:
        time.sleep(0.05)
        return self._session.run(outputs, feeds)


def test_slow_files_get_fewer_runs_and_warm_up_calls(mixq_main, files, monkeypatch):
    from mixq.cli import bench

    load = bench.load_session
    monkeypatch.setattr(bench, "load_session", lambda path, threads, runtime=None: Slow(load(path, threads, runtime)))
    code, out, err = mixq_main("bench", "a.onnx", "b.onnx", "--batch", "1", "--budget", "2", "--json", "s.json",
                               cwd=files)
    assert code == 0, err
    data = json.loads((files / "s.json").read_text())
    # a round of both files takes >= 0.1 s: 50 runs would take 5 s, 5 warm-up calls a quarter of the budget
    assert 3 <= data["runs"]["1"] < 20 and 1 <= data["warmup"] <= 2, data
    assert data["seconds"] < 20  # generous: the plan aims at 1.9 s
