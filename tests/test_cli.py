"""The ``kvmonai`` command line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmonai.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


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


def test_bundles_writes_and_checks_the_bundles_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVMONAI_BUNDLES", str(tmp_path))
    assert main(["bundles", "--check"]) == 1
    assert "setr_kv: bundle folder missing" in capsys.readouterr().out.splitlines()
    assert main(["bundles"]) == 0
    written = capsys.readouterr().out.splitlines()
    assert str(tmp_path / "setr_kv") in written and str(tmp_path / "unet_cnn") in written
    assert main(["bundles", "--check"]) == 0
    assert capsys.readouterr().out == ""
    train = tmp_path / "setr_kv" / "configs" / "train.json"
    train.write_text(train.read_text().replace('"max_epochs": 50', '"max_epochs": 5'))
    assert main(["bundles", "--check"]) == 1
    assert capsys.readouterr().out.splitlines() == ["setr_kv/configs/train.json: differs from the template"]


def test_export_takes_a_bundle_name(tmp_path, monkeypatch, capsys):
    bundles = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles" / "setr_kv", bundles / "setr_kv", ignore=shutil.ignore_patterns("models", "runs"))
    monkeypatch.setenv("KVMONAI_BUNDLES", str(bundles))
    monkeypatch.chdir(tmp_path)  # no folder named setr_kv here: the name is looked up in the bundles folder
    argv = ["export", "setr_kv", "--weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "none.pt: no such file" in capsys.readouterr().err  # found by name; the weights are checked next

    assert main(["export", "setr_kx", "--weights", "w.pt", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "kvmonai export: error: setr_kx is neither a bundle folder nor a bundle"
    )
    assert str(bundles / "setr_kx") in err and "KVMONAI_BUNDLES" in err and "Known bundles: setr_kv." in err
