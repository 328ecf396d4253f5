"""Evaluation report of a bundle: a JSON summary and a per-case CSV with the paper's and the competition's metrics."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from kvmonai.data import CLASSES
from kvmonai.metrics import (
    EMPTY_CONVENTIONS,
    CompetitionScoreMetric,
    JaccardMetric,
    SliceDiceMetric,
    confusion_counts,
    jaccard_from_counts,
    score_from_parts,
)
from kvmonai.utils import atomic_output, csv_text, write_text_atomic

Events, _ = optional_import("ignite.engine", name="Events")

__all__ = ["EvaluationReport"]


#: the day suffix of a case-day id (``case123_day20`` -> case ``case123``)
_DAY_SUFFIX = re.compile(r"_day\d+$")


def _num(x: Any) -> float | None:
    v = float(x)
    return None if math.isnan(v) else round(v, 6)


class EvaluationReport:
    """Attach to an evaluator over whole case-day volumes: write ``summary.json`` and ``per_case.csv``.

    Every iteration reads binary predictions and labels ``(3, H, W, D)`` per volume from ``engine.state.output``
    (keys ``pred_key``/``label_key``, after post-processing) and the case-day id from ``id_key`` of the output or
    the batch. The summary holds the
    paper's Jaccard and weighted Jaccard (pixels pooled over the evaluated volumes), per-class Jaccard, the
    per-slice Dice per class and the competition score (0.4 Dice + 0.6 (1 - normalised 3D Hausdorff)) under both
    conventions for classes absent from prediction and truth (``skip`` and ``perfect``, see
    ``kvmonai.metrics``). Files are written atomically at the end of the run.

    Args:
        output_dir: folder of ``summary.json`` and ``per_case.csv``.
        settings: run description copied into the summary (architecture, attention, data, fold...).
        pred_key: output key of the binary prediction.
        label_key: output key of the label.
        id_key: output key of the case-day id.
        case_key: output or batch key of the patient (case) a volume belongs to, written as the ``case`` column;
            where it is missing, the case-day id without its ``_dayN`` suffix.
        save_example: also write ``examples.npz`` with the slice of the first volume that holds the most labelled
            pixels: the middle input channel (network resolution) and the label and prediction resampled to it.
    """

    def __init__(
        self,
        output_dir: str,
        settings: dict[str, Any] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        id_key: str = "id",
        save_example: bool = True,
        case_key: str = "case",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.save_example = save_example
        self.settings = dict(settings or {})
        self.pred_key, self.label_key, self.id_key, self.case_key = pred_key, label_key, id_key, case_key
        self.reset()

    def _write_example(self, item: dict[str, Any], pred: torch.Tensor, label: torch.Tensor) -> None:
        image = torch.as_tensor(item["image"]).float()
        z = int(label[0].flatten(0, -2).sum(0).argmax()) if label.any() else label.shape[-1] // 2
        size = image.shape[1:3]

        def resample(mask: torch.Tensor) -> np.ndarray:
            m = mask[0, ..., z].float().unsqueeze(0)
            return torch.nn.functional.interpolate(m, size=tuple(size), mode="nearest")[0].to(torch.uint8).numpy()

        centre = image[image.shape[0] // 2, ..., z].numpy()
        with atomic_output(self.output_dir / "examples.npz") as tmp:
            np.savez_compressed(tmp, image=centre, label=resample(label), pred=resample(pred), slice=z)

    def reset(self) -> None:
        self.jaccard = JaccardMetric(reduction="none")
        self.dice = SliceDiceMetric(reduction="none")
        self.score = CompetitionScoreMetric()
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Any) -> None:
        outputs = engine.state.output
        outputs = outputs if isinstance(outputs, list) else [outputs]
        batch = engine.state.batch
        batch = batch if isinstance(batch, list) else [batch] * len(outputs)
        for i, (item, data) in enumerate(zip(outputs, batch, strict=True)):
            pred = torch.as_tensor(item[self.pred_key]).unsqueeze(0) > 0.5
            label = torch.as_tensor(item[self.label_key]).unsqueeze(0) > 0.5
            self.jaccard(pred, label)
            self.dice(pred, label)
            parts = self.score(pred, label)  # this volume's Dice sums and Hausdorff distances, also accumulated
            case = item.get(self.id_key, data.get(self.id_key, f"volume_{len(self.rows) + i}"))
            row: dict[str, Any] = {"id": case if isinstance(case, str) else str(case)}
            # the patient: all days of one case are one unit when the study's verdict resamples cases
            patient = item.get(self.case_key, data.get(self.case_key))
            row["case"] = _DAY_SUFFIX.sub("", row["id"]) if patient is None else str(patient)
            counts = confusion_counts(pred, label)[0]  # (C, 3): TP, FP, FN of this volume
            per_class_j = jaccard_from_counts(counts, reduction="none")
            for empty in EMPTY_CONVENTIONS:
                s = score_from_parts(parts, empty)
                row[f"score_{empty}"] = _num(s["score"])
                if empty == "skip":
                    for c, name in enumerate(CLASSES):
                        row[f"dice_{name}"] = _num(s["class_dice"][c])
                        row[f"hausdorff_{name}"] = _num(s["class_hausdorff"][c])
            for c, name in enumerate(CLASSES):
                row[f"jaccard_{name}"] = _num(per_class_j[c])
            # the volume's sufficient statistics: every summary metric is a function of their sums over volumes,
            # so the study's verdict can recompute it exactly for any resample of the cases
            for c, name in enumerate(CLASSES):
                row[f"tp_{name}"], row[f"fp_{name}"], row[f"fn_{name}"] = (int(v) for v in counts[c])
                row[f"dice_sum_{name}"] = round(float(parts[0, c, 0]), 9)
                row[f"dice_rows_{name}"] = int(parts[0, c, 1])
                row[f"empty_rows_{name}"] = int(parts[0, c, 2])
            if self.save_example and not self.rows and "image" in item:
                self._write_example(item, pred, label)
            self.rows.append(row)

    def summary(self) -> dict[str, Any]:
        """The aggregate metrics of the volumes seen so far."""
        if not self.rows:
            raise ValueError("EvaluationReport: no volume was evaluated; is the validation fold empty?")
        jac = self.jaccard.aggregate(reduction="none")
        scores = self.score.aggregate_all()
        return {
            "settings": self.settings,
            "num_volumes": len(self.rows),
            "jaccard": _num(self.jaccard.aggregate(reduction="mean")),
            "weighted_jaccard": _num(self.jaccard.aggregate(reduction="weighted")),
            "class_jaccard": {name: _num(jac[c]) for c, name in enumerate(CLASSES)},
            "class_dice": {
                empty: {name: _num(v) for name, v in zip(CLASSES, self.dice.aggregate(empty=empty), strict=True)}
                for empty in EMPTY_CONVENTIONS
            },
            "competition": {
                empty: {
                    "score": _num(s["score"]),
                    "dice": _num(s["dice"]),
                    "hausdorff": _num(s["hausdorff"]),
                }
                for empty, s in scores.items()
            },
            "conventions": "skip: a class absent from both prediction and truth is left out of the means; perfect: "
            "it counts as Dice 1 and distance 0",
        }

    def completed(self, engine: Any) -> None:
        summary = self.summary()
        write_text_atomic(self.output_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(self.output_dir / "per_case.csv", csv_text(self.rows))
        engine.state.metrics.update(
            {"jaccard": summary["jaccard"] or 0.0, "weighted_jaccard": summary["weighted_jaccard"] or 0.0}
        )
