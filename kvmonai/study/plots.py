"""Charts of the study: accuracy vs MACs, savings per architecture, training curves, predictions vs truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kvmonai.utils import pyplot, save_figure

__all__ = ["plot_accuracy_vs_macs", "plot_forest", "plot_predictions", "plot_savings", "plot_training_curves"]

_MARKERS = {"qkv": "o", "kv": "s", "kvpos": "^", "cnn": "D"}
_CLASS_COLOURS = np.array([[0.95, 0.35, 0.2], [0.2, 0.8, 0.3], [0.25, 0.45, 1.0]])


def _colours(archs: Sequence[str]) -> dict[str, Any]:
    cmap = pyplot().get_cmap("tab10")
    return {a: cmap(i) for i, a in enumerate(dict.fromkeys(archs))}


def plot_accuracy_vs_macs(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Jaccard (mean ± std) against GMACs, one colour per architecture, one marker per attention."""
    plt = pyplot()
    colours = _colours([r["arch"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.errorbar(
            r["macs"] / 1e9, r["jaccard"], yerr=r["jaccard_std"] or 0, marker=_MARKERS[r["attention"]],
            color=colours[r["arch"]], capsize=3, linestyle="none", markersize=8,
        )  # fmt: skip
    for arch, colour in colours.items():
        ax.plot([], [], color=colour, marker="o", linestyle="none", label=arch)
    for att, marker in _MARKERS.items():
        ax.plot([], [], color="grey", marker=marker, linestyle="none", label=att)
    ax.set(xlabel="GMACs per slice", ylabel="validation Jaccard", title="accuracy vs compute")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_savings(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Parameter and MAC change vs QKV per architecture, for KV and KV+Pos."""
    plt = pyplot()
    variants = [r for r in rows if "params_change_pct" in r]
    archs = list(dict.fromkeys(r["arch"] for r in variants))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    width = 0.38
    for ax, key, title in ((axes[0], "params_change_pct", "parameters"), (axes[1], "macs_change_pct", "MACs")):
        for j, att in enumerate(("kv", "kvpos")):
            vals = [next((r[key] for r in variants if r["arch"] == a and r["attention"] == att), np.nan) for a in archs]
            bars = ax.bar(np.arange(len(archs)) + (j - 0.5) * width, vals, width, label=att)
            ax.bar_label(bars, fmt="%.1f%%", fontsize=7)
        ax.set_xticks(np.arange(len(archs)), archs, rotation=20)
        ax.set(title=f"{title}: change vs QKV (%)")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def _read_curve(run_dir: Path) -> tuple[list[int], list[float], list[float]]:
    from kvmonai.bundle import read_metrics_csv

    rows = read_metrics_csv(run_dir)
    return (
        [int(r["epoch"]) for r in rows],
        [float(r["train_loss"]) for r in rows],
        [float(r["val_jaccard"]) if r.get("val_jaccard") else np.nan for r in rows],
    )


def plot_training_curves(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Training loss and validation Jaccard per epoch, one panel per architecture (first fold and seed)."""
    plt = pyplot()
    archs = list(dict.fromkeys(r["arch"] for r in results))
    fig, axes = plt.subplots(2, len(archs), figsize=(3.2 * len(archs), 5.5), squeeze=False)
    for i, arch in enumerate(archs):
        seen = set()
        for r in results:
            if r["arch"] != arch or r["attention"] in seen:
                continue
            seen.add(r["attention"])
            epochs, loss, jac = _read_curve(Path(r["run_dir"]))
            axes[0, i].plot(epochs, loss, marker=_MARKERS[r["attention"]], label=r["attention"])
            validated = [(e, j) for e, j in zip(epochs, jac, strict=True) if not np.isnan(j)]
            if validated:  # validation may run every few epochs only
                axes[1, i].plot(*zip(*validated, strict=True), marker=_MARKERS[r["attention"]], label=r["attention"])
        axes[0, i].set(title=arch, ylabel="training loss" if i == 0 else None)
        axes[1, i].set(xlabel="epoch", ylabel="val. Jaccard" if i == 0 else None, ylim=(0, 1))
        axes[0, i].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _overlay(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for c in range(masks.shape[0]):
        m = masks[c] > 0
        rgb[m] = 0.55 * rgb[m] + 0.45 * _CLASS_COLOURS[c]
    return rgb


def plot_predictions(results: Sequence[dict[str, Any]], path: Path, attentions: Sequence[str] = ("qkv", "kv")) -> Path:
    """Ground truth and predictions on validation slices: one row per architecture, QKV and KV side by side.

    Reads the examples saved by the evaluation (``eval/examples.npz``) and the images from the datalist.
    """
    from kvmonai.networks import REFERENCES

    plt = pyplot()
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        example = Path(r["run_dir"]) / "eval" / "examples.npz"
        reference = r["arch"] in REFERENCES  # no attention: shown in the first prediction column
        if example.is_file() and (r["attention"] in attentions or reference):
            column = attentions[0] if reference else r["attention"]
            chosen.setdefault(r["arch"], {}).setdefault(column, r)
    archs = list(chosen)
    if not archs:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "no saved examples", ha="center")
        return save_figure(fig, path)
    fig, axes = plt.subplots(len(archs), 1 + len(attentions), figsize=(3 * (1 + len(attentions)), 3 * len(archs)),
                             squeeze=False)  # fmt: skip
    for i, arch in enumerate(archs):
        first = next(iter(chosen[arch].values()))
        data = np.load(Path(first["run_dir"]) / "eval" / "examples.npz")
        image = data["image"]
        axes[i, 0].imshow(_overlay(image, data["label"]))
        axes[i, 0].set_title(f"{arch}: truth", fontsize=9)
        for j, att in enumerate(attentions, start=1):
            if att in chosen[arch]:
                pred = np.load(Path(chosen[arch][att]["run_dir"]) / "eval" / "examples.npz")["pred"]
                jac = chosen[arch][att]["jaccard"]
                axes[i, j].imshow(_overlay(image, pred))
                shown = chosen[arch][att]["attention"]
                axes[i, j].set_title(f"{shown} (Jaccard {jac:.2f})", fontsize=9)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle("red: large bowel, green: small bowel, blue: stomach", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


_VERDICT_COLOURS = {
    "inferior": "#c0392b",
    "equivalent": "#1e8449",
    "superior": "#2471a3",
    "non-inferior": "#52be80",
    "inconclusive": "#7f8c8d",
}


def plot_forest(rows: Sequence[dict[str, Any]], metric: str, path: Path) -> Path:
    """Each pair's difference to its QKV twin with its interval, against the ±margin band; one panel per organ.

    ``rows`` are verdict rows (``kvmonai.study.verdict``). An interval drawn hollow and grey carries a reason (e.g.
    one seed: it covers the case sampling only) and no verdict.
    """
    plt = pyplot()
    rows = [r for r in rows if r["metric"] == metric]
    organs = list(dict.fromkeys(r["organ"] for r in rows))
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    fig, axes = plt.subplots(1, len(organs), figsize=(3.2 * len(organs) + 1.5, 0.45 * len(pairs) + 1.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, organ in zip(axes, organs, strict=True):
        margin = next(r["margin"] for r in rows if r["organ"] == organ)
        ax.axvspan(-margin, margin, color="#d5f5e3", zorder=0, label=f"±δ = {margin:g}")
        ax.axvline(0, color="black", linewidth=0.8)
        for y, pair in enumerate(pairs):
            r = next((r for r in rows if r["organ"] == organ and r["pair"] == pair), None)
            if r is None or r.get("diff") is None or np.isnan(r["diff"]):
                continue
            colour = _VERDICT_COLOURS[r["verdict"]]
            hollow = bool(r.get("reason"))
            ax.errorbar(
                r["diff"], y, xerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], marker="o", capsize=3,
                color=colour, markerfacecolor="white" if hollow else colour, linestyle="none",
            )  # fmt: skip
            ax.annotate(r["verdict"], (r["hi"], y), xytext=(4, 0), textcoords="offset points", fontsize=7,
                        va="center", color=colour)  # fmt: skip
        ax.set_yticks(range(len(pairs)), pairs)
        ax.invert_yaxis()
        ax.set(title="pooled" if organ == "all" else organ.replace("_", " "), xlabel=f"Δ {metric} vs QKV twin")
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{metric}: difference to the QKV twin, 95 % interval (hollow: no verdict, see the reason)", fontsize=9
    )
    fig.tight_layout()
    return save_figure(fig, path)
