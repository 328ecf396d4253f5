"""The verdict as tables: ``verdict.csv``, the markdown table of the report and ``kvmonai verdict``, the plan, and
one terminal line per pair."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvmonai.study.pairing import POOLED
from kvmonai.utils import csv_text, markdown_table, write_text_atomic

__all__ = ["plan_markdown", "read_verdict", "verdict_lines", "verdict_markdown", "write_verdict"]

_CSV_FIELDS = [
    "pair", "twin", "metric", "organ", "diff", "lo", "hi", "margin", "verdict", "p_adjusted", "seeds", "cases",
    "folds", "runs", "se", "var_seed", "var_case", "var_interaction", "fold_sd", "seeds_needed",
    "seeds_needed_all_folds", "reason",
]  # fmt: skip


def _fmt(x: Any, digits: int = 3, sign: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _needed(r: dict[str, Any], key: str) -> str:
    """A plan cell: the number of seeds, or why there is none."""
    if r.get(key) is not None:
        return str(r[key])
    if r.get("se") is None:
        return "n/a"
    return "unknown (1 seed)" if r["seeds"] < 2 else "none: the cases limit the width"


def verdict_markdown(rows: Sequence[dict[str, Any]], metric: str = "jaccard", organ: str = POOLED) -> str:
    """The verdict table of one metric and organ: pair, Δ [95 % CI], verdict, adjusted p, runs, cases, plan."""
    head = ["pair", "vs", f"Δ {metric} [CI]", "verdict", "p adj.", "runs", "cases", "seeds needed (all folds)",
            "reason"]  # fmt: skip
    table = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != organ:
            continue
        ci = f"{_fmt(r.get('diff'))} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}]" if r.get("diff") is not None else "n/a"
        p = r.get("p_adjusted")
        table.append([r["pair"], r["twin"], ci, f"**{r['verdict']}**", "n/a" if p is None else f"{p:.3g}",
                      r["runs"], r["cases"], _needed(r, "seeds_needed_all_folds"), r.get("reason", "")])  # fmt: skip
    return markdown_table(head, table, ["left", "left", "right", "left", "right", "right", "right", "right", "left"])


def write_verdict(study: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``verdict.csv`` (one row per compared pair, metric and organ) atomically; returns its path."""
    out = [{k: r.get(k) for k in _CSV_FIELDS} for r in rows]
    return write_text_atomic(Path(study) / "verdict.csv", csv_text(out, _CSV_FIELDS))


def verdict_lines(rows: Sequence[dict[str, Any]], metric: str = "jaccard") -> list[str]:
    """One line per compared pair for a terminal: the pooled verdict, its interval and the per-organ words."""
    lines = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != POOLED:
            continue
        organs = [o for o in rows if o["metric"] == metric and o["pair"] == r["pair"] and o["organ"] != POOLED]
        words = ", ".join(f"{o['organ']} {o['verdict']}" for o in organs)
        ci = f"Δ {_fmt(r.get('diff'))} [{_fmt(r.get('lo'))}, {_fmt(r.get('hi'))}]" if r.get("diff") is not None else ""
        lines.append(f"{r['pair']} vs {r['twin']}: {r['verdict']} {ci} ({words})".replace("  ", " "))
    return lines


def plan_markdown(rows: Sequence[dict[str, Any]], metric: str = "jaccard") -> str:
    """The ``--plan`` answer: per pair, the parts of the difference's standard error and the seeds per fold needed
    for a half-width below δ/2, at the study's folds and at all folds of its datalist."""
    head = ["pair", "se from seeds", "se from cases", "se from seed x case", "sd over folds",
            "seeds needed (these folds)", "seeds needed (all folds)"]  # fmt: skip
    table = []
    for r in rows:
        if r["metric"] != metric or r["organ"] != POOLED or r.get("se") is None:
            continue

        sd = [_fmt(math.sqrt(r[k]) if r.get(k) is not None and (r["seeds"] > 1 or k == "var_case") else None, 4,
                   sign=False) for k in ("var_seed", "var_case", "var_interaction")]  # fmt: skip
        need = [_needed(r, k) for k in ("seeds_needed", "seeds_needed_all_folds")]
        table.append([r["pair"], *sd, _fmt(r.get("fold_sd"), 4, sign=False), *need])
    return markdown_table(head, table, ["left"] + ["right"] * 6)


def read_verdict(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``verdict.csv`` with numbers as numbers (empty cells as ``None``)."""
    text = {"pair", "twin", "metric", "organ", "verdict", "reason"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: v if k in text else (None if v == "" else float(v)) for k, v in r.items()})
    for r in rows:
        for k in ("seeds", "cases", "folds", "runs", "seeds_needed", "seeds_needed_all_folds"):
            r[k] = None if r[k] is None else int(r[k])
    return rows
