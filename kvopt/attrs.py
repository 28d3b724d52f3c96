"""What kvopt stores with each trial: the user-attr keys modules share, and failure kinds.

A trial that ends without values (pruned or failed) carries two attrs: ``reason``, one line
for people, and ``failure``, one of the :class:`Failure` kinds, for code. kvopt decides by
the kind, never by reading the reason. Studies stored before the kind existed have only
the reason; :func:`failure_kind` reads those in the one documented fallback. Foundation:
imports nothing from kvopt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BASELINE_ATTR",
    "ENGINE_ATTR",
    "CANDIDATE_ATTR",
    "CANDIDATE_SETTINGS_ATTR",
    "REASON_ATTR",
    "FAILURE_ATTR",
    "REUSED_FROM_ATTR",
    "CONSTRAINTS_ATTR",
    "NOISY_ATTR",
    "FIDELITY_ATTR",
    "QUALITY_ATTR",
    "Failure",
    "failure_kind",
]

# Trial user attrs that one module writes and another reads.
BASELINE_ATTR = "baseline"  # True on the baseline trial
# Study attr: the engine whose knobs the trials sample (absent in studies stored before engines: transformers).
ENGINE_ATTR = "engine"
CANDIDATE_ATTR = "candidate"  # the candidate's label, e.g. "static/sdpa/float16/b4"
CANDIDATE_SETTINGS_ATTR = "candidate_settings"  # the candidate's fields as a mapping
REASON_ATTR = "reason"  # why the trial has no values, one line for people
FAILURE_ATTR = "failure"  # the same as a Failure kind, for code
REUSED_FROM_ATTR = "reused_from"  # the earlier trial of the same candidate whose outcome it took
CONSTRAINTS_ATTR = "constraints"  # constraint name -> value (<= 0 met), as the trial set them
NOISY_ATTR = "noisy"  # True when the timings did not reach the precision asked
FIDELITY_ATTR = "fidelity"  # the candidate's outputs against the baseline's (kvopt.quality.Fidelity as a mapping)
QUALITY_ATTR = "quality"  # the quality guard's decision: {"kind": exact|lossy|checked|unverified, "note": ...}


class Failure:
    """Why a trial ended without values: the values of its ``failure`` user attr (plain strings)."""

    OUT_OF_MEMORY = "out_of_memory"  # the device or host ran out of memory
    ERROR = "error"  # measuring raised another exception (most often: not supported here)
    CRASHED = "crashed"  # the isolated trial process died without a result
    TIMEOUT = "timeout"  # the isolated trial process ran past trial.timeout_s and was killed
    OVER_BUDGET = "over_budget"  # predicted memory above the budget: never loaded
    LARGER_THAN_OOM = "larger_than_out_of_memory"  # a smaller batch of the same settings ran out of memory
    REPEAT = "repeat"  # the same candidate as an earlier failed trial: not run again
    DOMINATED = "dominated"  # stopped early: it cannot reach the Pareto front (feasible, not worth finishing)
    INTERRUPTED = "interrupted"  # Ctrl-C, or its worker died: says nothing about the candidate
    TOO_SLOW = "too_slow"  # one generate call predicted or seen at several trial budgets: not measured
    QUALITY = "quality"  # over the quality bounds, or lossy and unverifiable (random weights): not timed
    DROPPED = "dropped"  # dropped from the space before the study (cannot fit, or cannot be recommended)

    ALL = (
        OUT_OF_MEMORY,
        ERROR,
        CRASHED,
        TIMEOUT,
        OVER_BUDGET,
        LARGER_THAN_OOM,
        REPEAT,
        DOMINATED,
        INTERRUPTED,
        TOO_SLOW,
        QUALITY,
        DROPPED,
    )


# Studies stored before the ``failure`` attr: the reason texts kvopt wrote then, by kind.
# Checked in order; a reason that matches none was an exception while measuring.
_LEGACY_REASON_PREFIXES = (
    ("out of memory", Failure.OUT_OF_MEMORY),
    ("interrupted", Failure.INTERRUPTED),
    ("same candidate", Failure.REPEAT),
    ("dominated by", Failure.DOMINATED),
    ("trial exceeded trial.timeout_s", Failure.TIMEOUT),
    ("trial process", Failure.CRASHED),
    ("predicted ", Failure.OVER_BUDGET),
    ("batch ", Failure.LARGER_THAN_OOM),
)


def failure_kind(user_attrs: Mapping[str, Any]) -> str | None:
    """A trial's :class:`Failure` kind, or None if it has none (it completed, or ended silently).

    Reads the ``failure`` attr. For a trial stored by a kvopt that did not write it yet,
    and only then, the kind is recognised from the start of its ``reason`` text.
    """
    kind = user_attrs.get(FAILURE_ATTR)
    if kind is not None:
        return str(kind)
    reason = str(user_attrs.get(REASON_ATTR) or "")
    if not reason:
        return None
    return next((k for prefix, k in _LEGACY_REASON_PREFIXES if reason.startswith(prefix)), Failure.ERROR)
