"""``kvmonai benchmark``: interleaved timing, paired ratios, peak memory and the report of a tiny run."""

from __future__ import annotations

import csv

import pytest
import torch

from kvmonai.benchmark import Timing, peak_memory, ratio, time_interleaved
from kvmonai.cli import main


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_time_interleaved_runs_round_robin():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    result = time_interleaved(fns, repeats=3, warmup=2)
    assert calls == ["a", "b", "c"] * 5
    assert set(result) == {"a", "b", "c"} and all(len(t.times_ms) == 3 for t in result.values())
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved(fns, repeats=0)


def test_timing_summary_and_paired_ratio():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median == 3.0 and t.iqr == 2.0  # an outlier moves neither
    med, lo, hi = ratio(Timing((2.0, 4.0, 6.0)), Timing((1.0, 4.0, 2.0)))
    assert (med, lo, hi) == (2.0, 1.0, 3.0)  # per-round ratios 2, 1, 3


def test_peak_memory_sees_the_activations():
    x = torch.randn(256, 256)

    def work():
        y = x @ x  # 256 KiB
        z = y * 2  # another 256 KiB while y is alive
        return z.sum()

    peak = peak_memory(work)
    if peak is None:
        pytest.skip("torch's MemTracker is not available in this build")
    assert 2 * 256 * 1024 <= peak < 8 * 256 * 1024


def test_tiny_benchmark_writes_its_report(tmp_path, capsys):
    out = tmp_path / "bench"
    status = main(
        ["benchmark", "--preset", "tiny", "--archs", "setr", "cvt", "--suites", "models", "attention", "case",
         "--device", "cpu", "--repeats", "2", "--tokens", "16,64", "--hidden", "64", "--heads", "4",
         "--case-preset", "tiny", "--case-slices", "6", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert status == 0
    for name in ("report.md", "models.csv", "attention.csv", "case.csv", "models.png", "attention.png", "case.png"):
        assert (out / name).is_file(), name
    models = _rows(out / "models.csv")
    assert [(r["arch"], r["attention"]) for r in models] == [
        ("setr", "qkv"), ("setr", "kv"), ("setr", "kvpos"), ("cvt", "qkv"), ("cvt", "kv"), ("cvt", "kvpos")
    ]  # fmt: skip
    by_pair = {(r["arch"], r["attention"]): r for r in models}
    assert float(by_pair["setr", "qkv"]["latency_ratio"]) == 1.0
    assert int(by_pair["setr", "kv"]["params"]) < int(by_pair["setr", "qkv"]["params"])
    assert all(float(r["latency_ms"]) > 0 and float(r["throughput_slices_s"]) > 0 for r in models)
    attention = _rows(out / "attention.csv")
    assert {(int(r["tokens"]), r["attention"]) for r in attention} == {
        (n, a) for n in (16, 64) for a in ("qkv", "kv", "kvpos")
    }
    case = _rows(out / "case.csv")
    assert [(r["arch"], r["setting"]) for r in case] == [
        ("setr", "fp32"),
        ("setr", "fast"),
        ("cvt", "fp32"),
        ("cvt", "fast"),
    ]
    assert all(int(r["slices"]) == 6 and float(r["case_s"]) > 0 for r in case)
    assert all(0.9 <= float(r["mask_dice_vs_fp32"]) <= 1.0 for r in case if r["setting"] == "fast")
    report = (out / "report.md").read_text()
    assert "kvmonai benchmark --preset tiny" in report and "machine:" in report
    assert "## Whole-case inference" in report and "report.md" in capsys.readouterr().out


def test_benchmark_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        main(["benchmark", "--tokens", "16,zero", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="repeats"):
        main(["benchmark", "--repeats", "0", "--out", str(tmp_path)])
