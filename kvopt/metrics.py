"""The study's objectives, each described once: name, direction, unit, labels and SLO key.

Everything kvopt says about a metric derives from :data:`OBJECTIVES`: the Optuna
directions, which way is better (:attr:`Metric.sign`), the profile's SLO keys and the
constraint each one becomes, every label in the terminal, the report and the plots. A new
metric is one :class:`Metric` entry here (and its measurement). Foundation: imports nothing
from kvopt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Metric",
    "Direction",
    "OBJECTIVES",
    "METRIC_BY_NAME",
    "METRICS",
    "DIRECTIONS",
    "SLO_KEYS",
    "SIGN",
    "MB",
    "slo_violations",
]

# Optuna's names for the two ways an objective can go.
Direction = Literal["minimize", "maximize"]

# Bytes in one MB, the unit of every memory figure kvopt reports (MiB, as torch reports).
MB = 1024 * 1024


@dataclass(frozen=True)
class Metric:
    """One objective of the study and every way kvopt names it."""

    name: str  # Optuna's metric name and the key in Result.values: "ttft_ms"
    direction: Direction
    unit: str  # "ms", "tok/s", "MB"
    label: str  # short, in sentences and narrow tables: "decode"
    long_label: str  # in the report's gain rows: "decode throughput"
    axis_label: str  # on a plot's axis, with the unit: "decode (tok/s)"
    column: str  # a compact table header: "tok/s"
    slo_key: str  # the profile's SLO on it: "min_decode_tok_s" (a floor), "max_ttft_ms" (a ceiling)

    @property
    def higher_is_better(self) -> bool:
        """Whether larger values are better (throughput), not smaller (time, memory)."""
        return self.direction == "maximize"

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is: ``sign * value`` always grows with quality."""
        return 1.0 if self.higher_is_better else -1.0

    @property
    def header(self) -> str:
        """A table header with the unit: ``decode tok/s``."""
        return f"{self.label} {self.unit}"

    def slo_excess(self, value: float, limit: float) -> float:
        """How far ``value`` lies past the SLO ``limit`` in the metric's unit (<= 0: met).

        Optuna's constraint convention: a ceiling (lower is better) is exceeded above it,
        a floor (higher is better) below it.
        """
        return -self.sign * (value - limit)

    def slo_violation(self, value: float, limit: float) -> str | None:
        """``decode 12.0 tok/s < 20 tok/s`` when ``value`` misses the SLO, else None."""
        missed = value < limit if self.higher_is_better else value > limit
        if not missed:
            return None
        worse = "<" if self.higher_is_better else ">"
        return f"{self.label} {value:.1f} {self.unit} {worse} {limit:g} {self.unit}"


# The study's objectives, in Optuna's order (the order of every trial's values).
OBJECTIVES: tuple[Metric, ...] = (
    Metric("ttft_ms", "minimize", "ms", "TTFT", "TTFT", "TTFT (ms)", "TTFT ms", "max_ttft_ms"),
    Metric(
        "decode_tok_s",
        "maximize",
        "tok/s",
        "decode",
        "decode throughput",
        "decode (tok/s)",
        "tok/s",
        "min_decode_tok_s",
    ),
    Metric("peak_mem_mb", "minimize", "MB", "memory", "peak memory", "peak memory (MB)", "mem MB", "max_mem_mb"),
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in OBJECTIVES}
METRICS: tuple[str, ...] = tuple(m.name for m in OBJECTIVES)
DIRECTIONS: tuple[Direction, ...] = tuple(m.direction for m in OBJECTIVES)
SLO_KEYS: tuple[str, ...] = tuple(m.slo_key for m in OBJECTIVES)
# Metric name -> +1 (higher is better) or -1 (lower is better).
SIGN: dict[str, float] = {m.name: m.sign for m in OBJECTIVES}


def slo_violations(values: Mapping[str, float], slo: Mapping[str, float | None]) -> list[str]:
    """One line per SLO that ``values`` miss, in objective order; empty when all are met.

    Args:
        values: metric name -> measured value.
        slo: SLO key (``max_ttft_ms``, ...) -> limit, or None for no limit.
    """
    out = []
    for metric in OBJECTIVES:
        limit = slo.get(metric.slo_key)
        if limit is not None:
            line = metric.slo_violation(values[metric.name], limit)
            if line is not None:
                out.append(line)
    return out
