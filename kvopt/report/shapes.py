"""Per request shape of a profile's mix: rows of the recommendation's confirmed gains there.

One source for the terminal, report.md/.html (via :mod:`kvopt.report.content`): the rows come
from a confirmation's stored form (``Confirmation.to_dict()``), see :mod:`kvopt.confirm`.
"""

from __future__ import annotations

import math
from typing import Any

from kvopt.metrics import METRICS

__all__ = ["SHAPE_HEADER", "confirmed_shape_rows", "pct_cell"]


def pct_cell(value: float | None) -> str:
    """A gain in percent with its sign, ``n/a`` when there is none."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.1f}%"


SHAPE_HEADER = ("shape (prompt+new)", "share", "TTFT", "decode tok/s", "peak memory", "score", "this shape prefers")


def confirmed_shape_rows(stored: dict[str, Any], labels: dict[int, str]) -> list[tuple[str, ...]]:
    """One row per shape from a confirmation's stored form (``Confirmation.to_dict()``) and trial labels."""
    if not stored.get("shapes"):
        return []
    labels = {n: f"#{n} {label}" for n, label in labels.items()}
    rec = str(stored["recommended"])
    rows = []
    for shape in stored["shapes"]:
        gains = shape["gains"][rec]
        name = f"{shape['prompt_tokens']}+{shape['new_tokens']}" + (" (trials)" if shape.get("trial_shape") else "")
        if shape.get("clamped_from"):
            name += f", clamped from {shape['clamped_from']}"
        rows.append(
            (
                name,
                f"{shape['share']:.0%}",
                *(pct_cell(gains[m]["pct"]) for m in METRICS),
                f"{shape['score'][rec]:+.3f}",
                labels.get(shape["preferred"], str(shape["preferred"])),
            )
        )
    return rows
