"""Candidates the study never measures, found before it starts: they cannot change the answer.

A trial spent on a candidate that cannot be recommended buys no evidence. Before the study,
every candidate the probe left in the space is asked, in the order a trial asks them:

1. can it run: the engine's probe has already dropped what cannot run here;
2. can it fit: the engine's memory model's prediction against the budget;
3. can it be recommended: the quality guard's plan (:mod:`kvopt.quality`) — a lossy setting
   with random weights and without ``quality.allow_unverified`` can never be.

The first refusal is the candidate's reason. :meth:`kvopt.space.SearchSpace.drop` then takes
out whole choices where every candidate of a choice is refused, and excludes the rest one by
one. No model runs here.
"""

from __future__ import annotations

from collections.abc import Callable

from kvopt.config import QualityConfig
from kvopt.metrics import MB
from kvopt.predict import MemoryPrediction
from kvopt.quality import plan_quality
from kvopt.space import Candidate, SearchSpace
from kvopt.workload import Workload

__all__ = ["over_budget", "refusals", "screen"]


def over_budget(prediction: MemoryPrediction, budget_bytes: int | None) -> str | None:
    """Why a candidate with this predicted peak cannot fit the budget, or None when it fits (or no budget)."""
    if budget_bytes is None or prediction.total_bytes <= budget_bytes:
        return None
    return (
        f"predicted {_mb(prediction.total_bytes)} MB > memory budget {_mb(budget_bytes)} MB (pruning.memory_budget_mb)"
    )


def _mb(n_bytes: float) -> str:
    """MB with three significant digits below 100 (1.04 > 1 reads as more, 1.0 > 1.0 did not)."""
    mb = n_bytes / MB
    return f"{mb:,.1f}" if mb >= 100 else f"{mb:.3g}"


def refusals(
    space: SearchSpace,
    predict: Callable[[Candidate, Workload], MemoryPrediction],
    workload: Workload,
    *,
    weights: str,
    quality: QualityConfig | None,
    memory_budget_bytes: int | None,
) -> dict[Candidate, str]:
    """Each candidate of ``space`` that cannot fit or cannot be recommended, with the first reason.

    Args:
        space: the probed search space (what cannot run is already out of it).
        predict: the engine's memory model (:meth:`kvopt.engines.base.Engine.predict_memory`).
        workload: the shape trials measure.
        weights: ``pretrained`` or ``random``: random weights cannot verify a lossy setting.
        quality: the quality guard's settings (None: no guard, nothing refused for quality).
        memory_budget_bytes: the trials' memory budget (None: the device cannot tell).
    """
    out: dict[Candidate, str] = {}
    for candidate in space.candidates():
        why = over_budget(predict(candidate, workload), memory_budget_bytes)
        if why is None and quality is not None:
            why = plan_quality(candidate, space.baseline, weights, quality).blocked
        if why is not None:
            out[candidate] = why
    return out


def screen(
    space: SearchSpace,
    predict: Callable[[Candidate, Workload], MemoryPrediction],
    workload: Workload,
    *,
    weights: str,
    quality: QualityConfig | None,
    memory_budget_bytes: int | None,
) -> SearchSpace:
    """``space`` without the candidates :func:`refusals` finds: whole choices where a whole choice is out."""
    return space.drop(
        refusals(space, predict, workload, weights=weights, quality=quality, memory_budget_bytes=memory_budget_bytes)
    )
