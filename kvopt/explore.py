"""After a repeat, measure something new: the next trial gets an unmeasured candidate.

A sampler may propose a candidate the study already has. kvopt never measures it twice
(the earlier result is reused, a failure is repeated without running), so the trial costs
no measuring time — but it teaches the sampler nothing, and samplers that model only
completed trials (GP; NSGA-II's population) propose the same pruned or failed candidate
again and again: replayed on a recorded grid, GP with dominance pruning spent 16 trials in
a row on repeats (docs/benchmarks.md). So after a repeat, one unmeasured candidate, drawn
at random, is queued for the next trial; the sampler then learns from its result.

:func:`remaining_candidates` says what a study has left to measure at all: a re-run of a
study with nothing left spends no trials.
"""

from __future__ import annotations

import random
from typing import Any

import optuna
from optuna.trial import TrialState

from kvopt.attrs import REUSED_FROM_ATTR
from kvopt.sampler import read_study
from kvopt.space import Candidate, SearchSpace, candidate_key

__all__ = ["queue_unmeasured_after_repeat", "remaining_candidates", "tried_candidates"]


def tried_candidates(study: optuna.Study) -> set[tuple[tuple[str, Any], ...]]:
    """The candidates the study has finished a trial of (completed, pruned or failed)."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return {candidate_key(t.params) for t in study.get_trials(deepcopy=False, states=done)}


def remaining_candidates(study: optuna.Study, space: SearchSpace) -> list[Candidate]:
    """The runnable candidates of ``space`` the study has not measured yet.

    Measured: completed, or stopped early by the dominance rule (its partial medians are an
    observation). Not runnable: dropped before the study (``space.excluded``), found unable to
    run or refused by the quality guard, or a larger batch than one that ran out of memory
    with the same settings. A candidate still queued, running in another worker, or whose
    trial was interrupted (Ctrl-C) is not measured yet, so it remains.
    """
    state = read_study(study, space)
    done = set(state.measured) | state.partial | state.cannot_run
    return [c for c in space.candidates() if candidate_key(c.params()) not in done]


def queue_unmeasured_after_repeat(
    study: optuna.Study, space: SearchSpace, trial: optuna.trial.FrozenTrial, rng: random.Random
) -> Candidate | None:
    """If ``trial`` repeated an earlier candidate, queue an unmeasured one; return it (or None)."""
    if trial.user_attrs.get(REUSED_FROM_ATTR) is None:
        return None
    # The grid sampler walks every point itself and cannot take a trial it did not plan.
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        return None
    trials = study.get_trials(deepcopy=False)
    # Waiting trials count as taken: never queue a second one, never queue what is queued.
    if any(t.state == TrialState.WAITING for t in trials):
        return None
    taken = {candidate_key(t.params) for t in trials if t.params}
    unmeasured = [c for c in space.candidates() if candidate_key(c.params()) not in taken]
    if not unmeasured:
        return None
    choice = rng.choice(unmeasured)
    study.enqueue_trial(
        choice.params(),
        user_attrs={"queued_because": f"trial #{trial.number} repeated #{trial.user_attrs[REUSED_FROM_ATTR]}"},
    )
    return choice
