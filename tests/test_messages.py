"""``mixq.messages.first_line``: the one helper the library and the command line quote errors with."""

import pytest

from mixq.messages import first_line


@pytest.mark.parametrize(("err", "limit", "expected"), [
    (ValueError("bad shape\n  at layer 3"), None, "bad shape"),
    (ValueError("\n\n  indented first line  \nsecond"), None, "indented first line"),
    (ValueError(""), None, "ValueError"),
    (KeyError(), None, "KeyError"),
    (RuntimeError("x" * 300), 160, "x" * 160),
], ids=["two-lines", "leading-blank-lines", "empty", "no-message", "limit"])
def test_first_line(err, limit, expected):
    assert first_line(err, limit) == expected
