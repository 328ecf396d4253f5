"""``kvmonai benchmark``: interleaved timing, paired ratios, peak memory and the report of a tiny run."""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

import kvmonai.benchmark.report as benchmark_report
from kvmonai.benchmark import Timing, peak_memory, ratio, time_interleaved
from kvmonai.benchmark.attention import AttentionResult
from kvmonai.benchmark.case import CaseResult
from kvmonai.benchmark.models import ModelResult
from kvmonai.cli import main


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def figures(monkeypatch) -> dict[str, Any]:
    """The figures the benchmark report saves, by file stem; the charts are still written."""
    saved: dict[str, Any] = {}
    real = benchmark_report.save_figure

    def spy(fig, path, *args, **kwargs):
        saved[Path(path).stem] = fig
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(benchmark_report, "save_figure", spy)
    return saved


def _num(value) -> float:
    return float(value)  # rows from a CSV hold strings, rows from the suites numbers


def _assert_charts_show(figures: dict[str, Any], models: list[dict], attention: list[dict], case: list[dict]) -> None:
    """Each chart holds exactly the numbers of the rows it was drawn from, under the right labels."""
    # networks: one horizontal bar per non-QKV row and panel, its length the time change vs the QKV twin in %
    others = [r for r in models if r["attention"] != "qkv"]
    panels = figures["models"].axes
    keys = ("latency_ratio", "throughput_ratio", "train_ratio")
    titles = ["latency (batch 1)", "time per batch (throughput)", "training step"]
    assert [ax.get_title() for ax in panels] == titles
    for ax, key in zip(panels, keys, strict=True):
        (bars,) = ax.containers
        np.testing.assert_allclose([b.get_width() for b in bars], [100 * (_num(r[key]) - 1) for r in others])
        colours = [to_hex("tab:blue" if r["attention"] == "kv" else "tab:orange") for r in others]
        assert [to_hex(b.get_facecolor()) for b in bars] == colours
    labels = [t.get_text() for t in panels[0].get_yticklabels()]
    assert labels == [f"{r['arch']}_{r['attention']}\n{r['device'].split(' (')[0]}" for r in others]

    # attention block: one line per variant and device, tokens against forward (left) and fwd+bwd (right) time
    for ax, key in zip(figures["attention"].axes, ("forward_ms", "backward_ms"), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for device in {r["device"] for r in attention}:
            for att in ("qkv", "kv", "kvpos"):
                sel = [r for r in attention if r["device"] == device and r["attention"] == att]
                line = lines.pop(f"{att} ({device.split(' (')[0]})")
                np.testing.assert_array_equal(line.get_xdata(), [int(r["tokens"]) for r in sel])
                np.testing.assert_allclose(line.get_ydata(), [_num(r[key]) for r in sel])
        assert not lines, f"lines without rows: {list(lines)}"

    # whole case: one bar group per bundle, one bar per setting, its height the seconds per case; the 10 s goal
    (ax,) = figures["case"].axes
    bundles = list(dict.fromkeys(f"{r['arch']}_{r['attention']}" for r in case))
    assert [t.get_text() for t in ax.get_xticklabels()] == bundles
    seconds = {(f"{r['arch']}_{r['attention']}", r["setting"]): _num(r["case_s"]) for r in case}
    settings = list(dict.fromkeys(r["setting"] for r in case))
    assert [bars.get_label() for bars in ax.containers] == settings
    for bars in ax.containers:
        np.testing.assert_allclose([b.get_height() for b in bars], [seconds[b, bars.get_label()] for b in bundles])
    assert any(line.get_label() == "10 s goal" and list(line.get_ydata()) == [10, 10] for line in ax.get_lines())


def _row(cls: type, **values) -> dict:
    """A full result row of dataclass ``cls``: ``values``, and 1.0 (or a neutral value) for every other field."""
    defaults = {"mfu": None, "peak_forward_mb": None, "peak_train_mb": None, "mask_dice_vs_fp32": None}
    defaults.update(channels_last=False, fuse=False, precision="fp32", preset="tiny")
    row = {f.name: values.get(f.name, defaults.get(f.name, 1.0)) for f in fields(cls)}
    return cls(**row).as_row()


def test_report_charts_show_the_rows(tmp_path, figures, monkeypatch):
    """The charts of a report from hand-made rows (no timing): bars, lines and labels hold exactly those numbers."""
    monkeypatch.setattr(benchmark_report, "machine_description", lambda: "test machine")  # skips a slow import
    models = [
        _row(ModelResult, device=d, arch=a, attention=t, params=10, macs=10**9, latency_ratio=lr, throughput_ratio=tr,
             train_ratio=sr)
        for d in ("cpu (2 threads)", "H200")
        for a, t, lr, tr, sr in (("setr", "qkv", 1.0, 1.0, 1.0), ("setr", "kv", 0.8, 0.9, 0.95),
                                 ("setr", "kvpos", 1.1, 1.2, 1.3))
    ]  # fmt: skip
    attention = [
        _row(AttentionResult, device=d, tokens=n, attention=t, forward_ms=k * n, backward_ms=3 * k * n)
        for d in ("cpu (2 threads)", "H200")
        for k, t in ((1.0, "qkv"), (0.5, "kv"), (0.7, "kvpos"))
        for n in (16, 64)
    ]
    case = [
        _row(CaseResult, arch=a, attention="kv", setting=s, case_s=c)
        for a, s, c in (("setr", "fp32", 12.0), ("setr", "fast", 4.0), ("cvt", "fp32", 20.0), ("cvt", "fast", 8.5))
    ]
    benchmark_report.write_benchmark_report(tmp_path, "kvmonai benchmark", models, attention, case, date="2026-01-01")
    assert set(figures) == {"models", "attention", "case"}
    _assert_charts_show(figures, models, attention, case)
    widths = [b.get_width() for b in figures["models"].axes[0].containers[0]]
    np.testing.assert_allclose(widths, [-20.0, 10.0, -20.0, 10.0])  # by hand: 0.8 -> -20 %, 1.1 -> +10 %


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


@pytest.mark.slow
def test_tiny_benchmark_writes_its_report(tmp_path, capsys, figures):
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
    _assert_charts_show(figures, models, attention, case)  # the charts show what the CSVs hold


def test_benchmark_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "--tokens", "16,zero", "--out", str(tmp_path)])
    assert "comma-separated integers for --tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["benchmark", "--tokens", "16,0", "--out", str(tmp_path)])
    assert "integers >= 1 for --tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="repeats"):
        main(["benchmark", "--repeats", "0", "--out", str(tmp_path)])
