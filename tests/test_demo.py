"""``python -m mixq demo --quick`` end to end in a subprocess: it runs, writes the report, and the numbers hold."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_quick(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "mixq", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"report: {out / 'report.md'}" in proc.stdout
    rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"fp32", "static int8", "dynamic int8", "weight-only int8", "fp16"}
    assert rows["static int8"]["max_abs_diff_vs_pytorch"] < 0.05
    assert rows["static int8"]["size_kb"] < rows["fp32"]["size_kb"]
    assert "| static int8 |" in (out / "report.md").read_text()


def test_version_and_help():
    version = subprocess.run([sys.executable, "-m", "mixq", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("mixq ")
    bad = subprocess.run([sys.executable, "-m", "mixq", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
