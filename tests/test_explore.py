"""A repeated candidate is followed by an unmeasured one, so no sampler stalls on repeats."""

from __future__ import annotations

import random

import optuna
from optuna.trial import TrialState

from kvopt.config import SearchSpaceConfig
from kvopt.engines.transformers.candidate import Candidate, space_from_config
from kvopt.explore import queue_unmeasured_after_repeat
from kvopt.space import SearchSpace

BASELINE = Candidate("dynamic", "sdpa", "float32", 1)


def _space() -> SearchSpace:
    cfg = SearchSpaceConfig(
        name="t",
        cache_implementation=("dynamic", "static", "quantized"),
        attn_implementation=("sdpa",),
        dtype=("float32",),
        batch_size=(1, 2),
        quantized_backends=("fp8",),
        static_compile=(False, True),
    )
    return space_from_config(cfg, BASELINE, {})


def test_candidates_lists_every_distinct_candidate_once():
    space = _space()
    cands = space.candidates()
    assert len(cands) == space.size == 8  # (dynamic + static x2 compile + fp8) x batch 1, 2
    assert len({tuple(sorted(c.params().items())) for c in cands}) == len(cands)


def _finish(study: optuna.Study, space: SearchSpace, cand: Candidate, **attrs) -> optuna.trial.FrozenTrial:
    study.enqueue_trial(cand.params())
    trial = study.ask()
    assert space.suggest(trial) == cand
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, [1.0, 1.0, 1.0])
    return study.trials[trial.number]


def test_after_a_repeat_the_next_trial_measures_something_new():
    space = _space()
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"])
    first = _finish(study, space, BASELINE)
    assert queue_unmeasured_after_repeat(study, space, first, random.Random(0)) is None  # not a repeat
    repeat = _finish(study, space, BASELINE, reused_from=first.number)
    queued = queue_unmeasured_after_repeat(study, space, repeat, random.Random(0))
    assert queued is not None and queued != BASELINE
    # Only one at a time: a second repeat while one is waiting queues nothing more.
    assert queue_unmeasured_after_repeat(study, space, repeat, random.Random(1)) is None
    nxt = study.ask()
    assert space.suggest(nxt) == queued
    assert nxt.user_attrs["queued_because"] == f"trial #{repeat.number} repeated #{first.number}"


def test_nothing_is_queued_once_every_candidate_is_taken():
    space = _space()
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"])
    trials = [_finish(study, space, c) for c in space.candidates()]
    repeat = _finish(study, space, BASELINE, reused_from=trials[0].number)
    assert queue_unmeasured_after_repeat(study, space, repeat, random.Random(0)) is None
    assert not [t for t in study.get_trials() if t.state == TrialState.WAITING]
