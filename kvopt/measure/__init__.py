"""Instruments: clocks, memory probes and statistics (no model logic)."""

from kvopt.measure.memory import MemoryReading, cache_bytes, measure_peak, weights_bytes
from kvopt.measure.stats import summarize
from kvopt.measure.timing import synchronize

__all__ = ["MemoryReading", "cache_bytes", "measure_peak", "weights_bytes", "summarize", "synchronize"]
