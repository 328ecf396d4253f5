"""The KV-vs-QKV study (``kvmonai study``): every pair trained and evaluated through its bundle, then reported, and
its verdict (``kvmonai verdict``): is each variant as good as its QKV twin, within a margin?

Names are imported from their submodule on first use, so ``kvmonai verdict --help`` does not import torch.
"""

from typing import TYPE_CHECKING

from kvmonai.utils import lazy_exports

_SUBMODULE: dict[str, str] = {
    "paired_difference": "report",
    "summarise": "report",
    "write_report": "report",
    "StudyConfig": "runner",
    "measure_paired_latency": "runner",
    "run_study": "runner",
    "plot_forest": "plots",
    "METRICS": "pairing",
    "VERDICTS": "verdict",
    "VerdictError": "pairing",
    "plan_markdown": "verdict_table",
    "read_verdict": "verdict_table",
    "study_verdict": "verdict",
    "verdict_lines": "verdict_table",
    "verdict_markdown": "verdict_table",
    "write_verdict": "verdict_table",
}

__all__ = [
    "METRICS",
    "StudyConfig",
    "VERDICTS",
    "VerdictError",
    "measure_paired_latency",
    "paired_difference",
    "plan_markdown",
    "plot_forest",
    "read_verdict",
    "run_study",
    "study_verdict",
    "summarise",
    "verdict_lines",
    "verdict_markdown",
    "write_report",
    "write_verdict",
]

if TYPE_CHECKING:  # pragma: no cover
    from kvmonai.study.pairing import METRICS, VerdictError
    from kvmonai.study.plots import plot_forest
    from kvmonai.study.report import paired_difference, summarise, write_report
    from kvmonai.study.runner import StudyConfig, measure_paired_latency, run_study
    from kvmonai.study.verdict import VERDICTS, study_verdict
    from kvmonai.study.verdict_table import (
        plan_markdown,
        read_verdict,
        verdict_lines,
        verdict_markdown,
        write_verdict,
    )

__getattr__, __dir__ = lazy_exports(__name__, _SUBMODULE, __all__)
