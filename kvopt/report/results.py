"""The results file: every trial, the front and the recommendation, as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

__all__ = ["trial_records", "write_json"]


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    records = []
    for t in study.get_trials(deepcopy=False):
        records.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "values": list(t.values) if t.values is not None else None,
                "reason": t.user_attrs.get("reason"),
                "baseline": bool(t.user_attrs.get("baseline")),
                "user_attrs": dict(t.user_attrs),
                "duration_s": t.duration.total_seconds() if t.duration else None,
            }
        )
    return records


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
