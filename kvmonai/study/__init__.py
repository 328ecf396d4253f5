"""The KV-vs-QKV study (``kvmonai study``): every pair trained and evaluated through its bundle, then reported."""

from kvmonai.study.report import paired_difference, summarise, write_report
from kvmonai.study.runner import StudyConfig, measure_paired_latency, run_study

__all__ = ["StudyConfig", "measure_paired_latency", "paired_difference", "run_study", "summarise", "write_report"]
