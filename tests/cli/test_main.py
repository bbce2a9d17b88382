"""``mixq --help``/``--version``, ``python -m mixq`` and the ``mixq`` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixq.cli import build_parser

COMMANDS = ["demo", "quantize", "bench", "inspect"]


def test_python_dash_m_version(mixq_cli, tmp_path):
    version = mixq_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("mixq 0.")


def test_console_script_help():
    script = shutil.which("mixq", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the mixq console script is not installed in this environment (pip install -e .)")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: mixq")
    assert all(command in proc.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mixq {command}") and "--debug" in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["frobnicate"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
