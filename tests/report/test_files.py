"""Outputs are written atomically: an interrupted write leaves the previous file (or nothing), never half a file."""

from __future__ import annotations

import os

import pytest

from mixq.report import Section, Table, Text, atomic_path, atomic_write_text, write_report
from mixq.report.files import check_writable


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "report.md", "old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.md"]


def test_new_files_get_normal_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_report_json_has_every_section_and_no_nan(tmp_path):
    sections = [Section("A", "a", [Text("x | y"), Table(["k", "v"], [["n", "1.0"]], "lr")], data={"v": float("inf")}),
                Section("B", "b", [Text("<b>")], data=[1, 2])]
    md = write_report(tmp_path, "T", sections, {"meta": 1}).read_text()
    assert "| k | v |\n| --- | ---: |\n| n | 1.0 |" in md
    html = (tmp_path / "report.html").read_text()
    assert "&lt;b&gt;" in html and '<td class="r">1.0</td>' in html
    assert (tmp_path / "report.json").read_text().replace(" ", "").replace("\n", "") == (
        '{"title":"T","meta":1,"a":{"v":null},"b":[1,2]}')


def test_check_writable_probes_and_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError, match="cannot create files in .*; export elsewhere"):
        check_writable(tmp_path / "missing", fix="export elsewhere")
