"""The paper's complexity table: parameters and MACs of every architecture/attention pair, with the change vs QKV."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from kvmonai.complexity.counting import count_macs, count_parameters
from kvmonai.utils import csv_text, markdown_table

__all__ = ["complexity_table", "format_table"]

COLUMNS = ("arch", "attention", "params", "params_change_pct", "macs", "macs_change_pct")


def complexity_table(
    preset: str = "paper",
    archs: Sequence[str] | None = None,
    img_size: int | None = None,
    in_channels: int = 3,
    out_channels: int = 3,
    progress: bool = True,
) -> list[dict[str, object]]:
    """Parameters and forward MACs (batch 1) of each architecture/attention pair.

    Args:
        preset: network preset (``"paper"``, ``"small"``, ``"tiny"``).
        archs: architectures to include (default: all).
        img_size: square input side (default: the preset's size, 224 for ``"paper"``).
        in_channels: input channels.
        out_channels: output classes.
        progress: show a progress bar on stderr.

    Returns:
        one dict per pair with the keys of ``COLUMNS``; the change columns are relative to the same
        architecture's QKV row, in percent (0.0 for QKV itself).
    """
    from kvmonai.networks import PRESET_IMG_SIZE, create, pairs

    size = img_size or PRESET_IMG_SIZE[preset]
    rows: list[dict[str, object]] = []
    baseline: dict[str, tuple[int, int]] = {}
    todo = pairs(archs)
    for arch, attention in tqdm(todo, desc=f"complexity ({preset}, {size}x{size})", disable=not progress):
        torch.manual_seed(0)
        model = create(arch, attention, preset, in_channels=in_channels, out_channels=out_channels, img_size=size)
        params = count_parameters(model)
        macs = count_macs(model, (1, in_channels, size, size))
        del model
        if attention == "qkv":
            baseline[arch] = (params, macs)
        ref_params, ref_macs = baseline.get(arch, (params, macs))
        rows.append(
            {
                "arch": arch,
                "attention": attention,
                "params": params,
                "params_change_pct": 100.0 * (params - ref_params) / ref_params,
                "macs": macs,
                "macs_change_pct": 100.0 * (macs - ref_macs) / ref_macs,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, object]], fmt: str = "md") -> str:
    """Render :func:`complexity_table` rows as a markdown table (``"md"``) or CSV (``"csv"``).

    Raises:
        ValueError: if ``fmt`` is not ``"md"`` or ``"csv"``.
    """
    if fmt == "csv":
        return csv_text(
            (
                {
                    **row,
                    "params_change_pct": f"{row['params_change_pct']:.3f}",
                    "macs_change_pct": f"{row['macs_change_pct']:.3f}",
                }
                for row in rows
            ),
            COLUMNS,
        )
    if fmt != "md":
        raise ValueError(f"fmt must be 'md' or 'csv', got {fmt!r}.")
    header = ("architecture", "attention", "parameters", "Δ params vs QKV", "GMACs", "Δ MACs vs QKV")
    cells = (
        (
            row["arch"],
            row["attention"],
            f"{row['params']:,}",
            f"{row['params_change_pct']:+.2f}%",
            f"{row['macs'] / 1e9:.3f}",
            f"{row['macs_change_pct']:+.2f}%",
        )
        for row in rows
    )
    return markdown_table(header, cells, ["left"] * 2 + ["right"] * 4) + "\n"
