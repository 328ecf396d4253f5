"""The ``kvmonai`` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvmonai.cli import COMMANDS, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "kvmonai.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "complexity" in result.stdout


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_complexity_csv(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["complexity", "--preset", "tiny", "--archs", "setr", "--format", "csv", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "arch,attention,params,params_change_pct,macs,macs_change_pct"
    assert [line.split(",")[1] for line in lines[1:]] == ["qkv", "kv", "kvpos"]
    assert float(lines[2].split(",")[3]) < 0  # KV has fewer parameters
    assert out.read_text() == "\n".join(lines) + "\n"
