"""``kvmonai benchmark``: side-by-side speed and memory of the attention variants, and whole-case inference time."""

from kvmonai.benchmark.attention import DEFAULT_TOKENS, AttentionResult, benchmark_attention
from kvmonai.benchmark.case import SETTINGS, CaseResult, benchmark_case, synthetic_case
from kvmonai.benchmark.models import ModelResult, benchmark_models
from kvmonai.benchmark.report import machine_description, write_benchmark_report
from kvmonai.benchmark.timing import Timing, forward_call, peak_memory, ratio, time_interleaved

__all__ = [
    "DEFAULT_TOKENS",
    "SETTINGS",
    "AttentionResult",
    "CaseResult",
    "ModelResult",
    "Timing",
    "benchmark_attention",
    "benchmark_case",
    "benchmark_models",
    "forward_call",
    "machine_description",
    "peak_memory",
    "ratio",
    "synthetic_case",
    "time_interleaved",
    "write_benchmark_report",
]
