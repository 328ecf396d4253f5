"""Parameter and MAC accounting (``kvmonai complexity``)."""

from kvmonai.complexity.counting import Complexity, count_macs, count_parameters, kvpos_elementwise_ops, measure
from kvmonai.complexity.table import complexity_table, format_table

__all__ = [
    "Complexity",
    "complexity_table",
    "count_macs",
    "count_parameters",
    "format_table",
    "kvpos_elementwise_ops",
    "measure",
]
