"""Exact hypervolume of a 3-objective front (all minimised), and the normalisation used.

Optuna's own hypervolume code is private (``optuna._hypervolume``), so kvopt carries a
small exact one: slice the dominated region along the third objective; each slab's
area is a 2-D hypervolume (a staircase sum). O(n² log n): plenty for fronts of < 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["hypervolume_2d", "hypervolume_3d", "Normalizer", "REFERENCE"]

Point = Sequence[float]
# Reference point in the normalised space ([0, 1] per objective, 1 = worst in the table):
# a little past the worst, so the table's extreme candidates still add volume.
REFERENCE = (1.1, 1.1, 1.1)


def hypervolume_2d(points: Sequence[Point], ref: Point) -> float:
    """Area dominated by ``points`` (minimised) and bounded by ``ref``."""
    inside = sorted((p[0], p[1]) for p in points if p[0] < ref[0] and p[1] < ref[1])
    area, best_y = 0.0, ref[1]
    for i, (x, y) in enumerate(inside):
        if y < best_y:
            best_y = y
        next_x = inside[i + 1][0] if i + 1 < len(inside) else ref[0]
        area += (next_x - x) * (ref[1] - best_y)
    return area


def hypervolume_3d(points: Sequence[Point], ref: Point) -> float:
    """Volume dominated by ``points`` (minimised) and bounded by ``ref``."""
    inside = sorted((p for p in points if all(p[i] < ref[i] for i in range(3))), key=lambda p: p[2])
    volume = 0.0
    for i, p in enumerate(inside):
        top = inside[i + 1][2] if i + 1 < len(inside) else ref[2]
        if top > p[2]:
            volume += hypervolume_2d(inside[: i + 1], ref) * (top - p[2])
    return volume


class Normalizer:
    """Maps (ttft_ms, decode_tok_s, peak_mem_mb) to [0, 1]³, all minimised, 0 = best.

    The logarithm of each objective, min-max scaled over the whole table: every study of
    that table is scored in the same space, and — as in kvopt's profile score, made of
    log-ratios — halving a 10 ms TTFT counts as much as halving a 1 s one (on a linear
    scale the slowest candidates would squeeze all good ones into one corner).
    Throughput is flipped (higher is better) so every axis is minimised.
    """

    def __init__(self, values: Sequence[dict[str, float]]) -> None:
        self.low = {m: min(math.log(v[m]) for v in values) for m in ("ttft_ms", "decode_tok_s", "peak_mem_mb")}
        self.high = {m: max(math.log(v[m]) for v in values) for m in ("ttft_ms", "decode_tok_s", "peak_mem_mb")}

    def _scale(self, metric: str, value: float) -> float:
        span = self.high[metric] - self.low[metric]
        return (math.log(value) - self.low[metric]) / span if span > 0 else 0.0

    def __call__(self, v: dict[str, float]) -> tuple[float, float, float]:
        return (
            self._scale("ttft_ms", v["ttft_ms"]),
            1.0 - self._scale("decode_tok_s", v["decode_tok_s"]),
            self._scale("peak_mem_mb", v["peak_mem_mb"]),
        )
