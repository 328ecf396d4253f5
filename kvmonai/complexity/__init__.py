"""Parameter and MAC accounting (``kvmonai complexity``)."""

from kvmonai.complexity.counting import Complexity, count_macs, count_parameters, kvpos_elementwise_ops, measure

__all__ = ["Complexity", "count_macs", "count_parameters", "kvpos_elementwise_ops", "measure"]
