"""The study in MLflow: a parent run per study, the bundles' runs as its children, the report and verdict on it."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

__all__ = ["finish_parent", "parent_run", "tag_child"]

logger = logging.getLogger(__name__)


def tag_child(tracking_uri: str, experiment_name: str, run_name: str, parent_id: str | None, result: dict) -> None:
    """Make the bundle's MLflow run a child of the study run and add the evaluation metrics to it."""
    if parent_id is None:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'", max_results=1
    )
    if not runs:
        return
    run_id = runs[0].info.run_id
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    for key in ("jaccard", "weighted_jaccard", "dice", "score"):
        if result.get(key) is not None:
            client.log_metric(run_id, f"eval_{key}", float(result[key]))


def parent_run(tracking_uri: str, experiment_name: str, study_name: str, params: dict[str, Any]) -> str | None:
    """The study's MLflow parent run (reused when the study is resumed), with the study's settings as parameters."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        found = client.search_runs([experiment_id], filter_string="tags.kvmonai_study = 'parent'", max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"study_{study_name}", tags={"kvmonai_study": "parent"})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        return run.info.run_id
    except Exception as e:  # tracking must never stop the study
        logger.warning(f"MLflow parent run not created ({e}); runs are still tracked individually.")
        return None


def _log_verdict(client: Any, run_id: str, path: Path) -> None:
    """The pooled verdicts as metrics (difference and interval) and tags (the word) of the study's parent run."""

    if not path.is_file():
        return
    client.log_artifact(run_id, str(path))
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["organ"] != "all":
                continue
            key = f"verdict_{r['pair']}_{r['metric']}"
            client.set_tag(run_id, key, r["verdict"])
            for name in ("diff", "lo", "hi"):
                if r[name]:
                    client.log_metric(run_id, f"{key}_{name}", float(r[name]))


def finish_parent(tracking_uri: str, parent_id: str, out: Path, failed: bool) -> None:
    """Log the report, charts and verdict to the parent run and end it (a tracking problem is logged, not raised)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        for path in sorted(out.glob("*.png")) + [out / "report.md", out / "results.csv"]:
            client.log_artifact(parent_id, str(path))
        _log_verdict(client, parent_id, out / "verdict.csv")
        client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")
    except Exception as e:
        logger.warning(f"could not log the report to MLflow: {e}")
