"""What a failed candidate's exception means: its trial state, a one-line reason, its kind."""

from __future__ import annotations

from typing import NamedTuple

import torch
from optuna.trial import TrialState

from kvopt.attrs import Failure

__all__ = ["FailureInfo", "failure_reason", "CallTooSlow"]


class CallTooSlow(RuntimeError):
    """One ``generate`` call of this candidate would take several times the trial budget."""


class FailureInfo(NamedTuple):
    """How a trial that raised ends: its state, a one-line reason, its :class:`Failure` kind."""

    state: TrialState
    reason: str
    kind: str


def _is_out_of_memory(exc: BaseException) -> bool:
    # The live exception's text is all torch gives on CPU (a RuntimeError); stored reasons
    # are never parsed: the kind is stored beside them.
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def failure_reason(exc: BaseException) -> FailureInfo:
    """(state, one-line reason, failure kind) for an exception raised while measuring a candidate."""
    lines = str(exc).strip().splitlines()
    first = (lines[0] if lines else "")[:240]
    if _is_out_of_memory(exc):
        return FailureInfo(TrialState.PRUNED, f"out of memory: {first}", Failure.OUT_OF_MEMORY)
    if isinstance(exc, CallTooSlow):  # its message is the reason
        return FailureInfo(TrialState.PRUNED, first, Failure.TOO_SLOW)
    return FailureInfo(TrialState.FAIL, f"{type(exc).__name__}: {first}", Failure.ERROR)
