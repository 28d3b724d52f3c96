"""Figures derived from stored results for plots (the notebook): no plotting library here."""

from __future__ import annotations

from kvopt.metrics import DIRECTIONS, METRICS
from kvopt.select import Result

__all__ = ["hypervolume_reference"]

# How far beyond the worst measured value the reference point lies, so every point counts.
_MARGIN = 0.1


def hypervolume_reference(results: list[Result]) -> list[float]:
    """A reference point worse than every measured result on every objective (Optuna's order).

    ``optuna.visualization.plot_hypervolume_history`` needs one; a trial beyond it adds no volume.
    """
    if not results:
        raise ValueError("no measured results: a hypervolume needs at least one")
    point = []
    for metric, direction in zip(METRICS, DIRECTIONS):
        values = [r.values[metric] for r in results]
        point.append(max(values) * (1 + _MARGIN) if direction == "minimize" else min(values) * (1 - _MARGIN))
    return point
