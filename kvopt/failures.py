"""What a failed candidate's exception means: its trial state and a one-line reason."""

from __future__ import annotations

import torch
from optuna.trial import TrialState

__all__ = ["failure_reason"]


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def failure_reason(exc: BaseException) -> tuple[TrialState, str]:
    """(state, one-line reason) for an exception raised while measuring a candidate."""
    lines = str(exc).strip().splitlines()
    first = (lines[0] if lines else "")[:240]
    if _is_out_of_memory(exc):
        return TrialState.PRUNED, f"out of memory: {first}"
    if type(exc).__name__ == "CallTooSlow":  # kvopt.protocol's: its message is the reason
        return TrialState.PRUNED, first
    return TrialState.FAIL, f"{type(exc).__name__}: {first}"
