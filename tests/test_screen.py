"""Trials only where they can change the answer: candidates dropped before the study, with reasons.

Refusals come in one order (can it run, can it fit, can it be recommended), before the study
and inside a trial; a stored study keeps opening; a study with nothing left to measure says so.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

import kvopt
from conftest import REPO, model_config, transformers_engine
from kvopt.attrs import FAILURE_ATTR, Failure
from kvopt.config import QualityConfig, StorageConfig, validate
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.engine import TransformersLoader
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.predict import predict_memory
from kvopt.explore import remaining_candidates
from kvopt.metrics import MB
from kvopt.paths import conf_dir
from kvopt.sampler import ProfileSampler
from kvopt.screen import refusals, screen
from kvopt.space import SearchSpace, candidate_key
from kvopt.storage import open_storage
from kvopt.study import check_compatible, open_study, resume_space
from kvopt.trial import Objective, outcome_of
from kvopt.workload import Workload

CPU = torch.device("cpu")
TRAINED = REPO / "tests" / "data" / "tiny-shakespeare"
BASE = Candidate("dynamic", "sdpa", "float32", 1)
WORKLOAD = Workload(32, 8)  # ci-micro's shape on tiny-gpt2
LOSSY = "a lossy setting is recommended only with quality.allow_unverified=true"
# Only the listed choices of the default space: the probe stays short.
SMALL = [
    "search_space.cache_implementation=[dynamic,quantized]",
    "search_space.quantized.backends=[fp8]",
    "search_space.attn_implementation=[sdpa]",
    "search_space.dtype=[float32,bfloat16,float16]",
    "search_space.batch_size=[1,2]",
]


def _prepare(*overrides: str):
    from kvopt.runner import prepare

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = validate(
            compose(config_name="config", overrides=["model=tiny-gpt2", "profile=ci-micro", *SMALL, *overrides])
        )
    return prepare(cfg)


def _mb(candidate: Candidate) -> float:
    return predict_memory(model_config("tiny-gpt2"), candidate, WORKLOAD).total_bytes


def _space(**choices) -> SearchSpace:
    fields = {
        "cache_implementation": ["dynamic"],
        "attn_implementation": ["sdpa", "eager"],
        "dtype": ["float32"],
        "batch_size": [1, 2, 4, 8],
        **choices,
    }
    return transformers_space(**fields, baseline=BASE)


def test_random_weights_drop_lossy_choices_before_the_study_with_their_reasons(tmp_path):
    p = _prepare("storage=memory")
    assert p.weights.kind == "random"
    assert p.space.values("dtype") == ["float32"] and p.space.values("cache_implementation") == ["dynamic"]
    assert p.space.dropped["dtype=bfloat16"] == (
        f"quality not measured: random weights (bfloat16 instead of the model's float32); {LOSSY}"
    )
    assert "float16 instead of the model's float32" in p.space.dropped["dtype=float16"]
    assert "quantized KV cache (fp8)" in p.space.dropped["cache_implementation=quantized"]
    assert p.space.distributions()["dtype"] == CategoricalDistribution(["float32"])  # never sampled
    assert p.space.size == 2 and not p.space.excluded
    # The plan says so, one line each, and the study keeps them in its dropped_choices attr.
    from kvopt.report.terminal import print_plan
    from kvopt.runner import _plan_lines, _study_attrs

    console = Console(record=True, width=300)
    print_plan(console, _plan_lines(p), p.space.dropped)
    out = console.export_text()
    assert "dropped       dtype=bfloat16: quality not measured: random weights (bfloat16 instead" in out
    assert "dropped       cache_implementation=quantized: quality not measured" in out
    assert _study_attrs(p)["dropped_choices"]["dtype=float16"] == p.space.dropped["dtype=float16"]


def test_lossy_choices_stay_with_allow_unverified_or_pretrained_weights():
    allowed = _prepare("storage=memory", "quality.allow_unverified=true")
    assert allowed.space.values("dtype") == ["float32", "bfloat16", "float16"]
    assert "quantized" in allowed.space.values("cache_implementation") and not _lossy_dropped(allowed.space)
    trained = _prepare("storage=memory", f"model.hub_id={TRAINED}", "model.weights=pretrained")
    assert trained.weights.kind == "pretrained"  # a folder written by save_pretrained: fidelity is measured
    assert trained.space.values("dtype") == ["float32", "bfloat16", "float16"]
    assert "quantized" in trained.space.values("cache_implementation") and not _lossy_dropped(trained.space)


def _lossy_dropped(space: SearchSpace) -> list[str]:
    return [k for k in space.dropped if k.startswith(("dtype=", "cache_implementation="))]


def test_a_choice_over_the_budget_everywhere_goes_whole_and_single_combinations_one_by_one():
    space = _space()
    eager_b4 = Candidate("dynamic", "eager", "float32", 4)
    sdpa_b4 = Candidate("dynamic", "sdpa", "float32", 4)
    budget = int((_mb(eager_b4) + _mb(sdpa_b4)) / 2)  # eager/b4 is over, sdpa/b4 fits; every b8 is over
    assert _mb(Candidate("dynamic", "sdpa", "float32", 8)) > budget
    cfg = model_config("tiny-gpt2")
    screened = screen(
        space,
        transformers_engine(cfg).predict_memory,
        WORKLOAD,
        weights="random",
        quality=QualityConfig(),
        memory_budget_bytes=budget,
    )
    assert screened.values("batch_size") == [1, 2, 4]  # batch 8 is out of the Optuna distributions
    assert screened.dropped["batch_size=8"].startswith("predicted ")
    assert f"> memory budget {budget / MB:.3g} MB (pruning.memory_budget_mb)" in screened.dropped["batch_size=8"]
    assert screened.dropped[eager_b4.label].startswith("predicted ")
    assert set(screened.excluded) == {candidate_key(eager_b4.params())}
    assert eager_b4 not in screened.candidates() and sdpa_b4 in screened.candidates()
    assert screened.size == 2 * 3 - 1
    assert screened.excluded_reason(eager_b4) == screened.dropped[eager_b4.label]
    # kvopt's sampler never proposes it: it is not in the pool it chooses from.
    sampler = ProfileSampler(screened, _profile(), seed=0)
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"], sampler=sampler)
    for _ in range(screened.size):
        trial = study.ask()
        candidate = screened.suggest(trial)
        assert candidate != eager_b4
        study.tell(trial, [1.0, 1.0, 1.0])


def _profile():
    from conftest import profile_config

    return profile_config("ci-micro")


def test_memory_comes_before_quality_before_the_study_and_inside_a_trial(tmp_path):
    space = _space(attn_implementation=["sdpa"], dtype=["float32", "bfloat16"], batch_size=[1, 8])
    big_bf16 = Candidate("dynamic", "sdpa", "bfloat16", 8)
    small_bf16 = Candidate("dynamic", "sdpa", "bfloat16", 1)
    budget = int((_mb(BASE) + _mb(big_bf16)) / 2)  # the baseline fits, bfloat16 at batch 8 does not
    assert _mb(big_bf16) > budget > _mb(small_bf16)
    cfg = model_config("tiny-gpt2")
    why = refusals(
        space,
        transformers_engine(cfg).predict_memory,
        WORKLOAD,
        weights="random",
        quality=QualityConfig(),
        memory_budget_bytes=budget,
    )
    assert why[big_bf16].startswith("predicted ")  # can it fit: asked before can it be recommended
    assert why[small_bf16].startswith("quality not measured: random weights")
    # Inside a trial (a space not screened, as a replay uses): the memory refusal comes first too.
    storage = open_storage(StorageConfig("rdb", f"sqlite:///{tmp_path / 's.db'}"))
    study = open_study(storage, "t", optuna.samplers.RandomSampler(seed=0), {})
    loader = ModelLoader(cfg, WeightsSource("random", "test"), CPU, seed=0)
    objective = Objective(
        space,
        transformers_engine(cfg),
        WORKLOAD,
        loader=TransformersLoader(loader),
        warmup=1,
        repetitions=3,
        seed=0,
        memory_budget_bytes=budget,
        quality=QualityConfig(),
    )
    for candidate, kind in ((big_bf16, Failure.OVER_BUDGET), (small_bf16, Failure.QUALITY)):
        study.enqueue_trial(candidate.params())
        study.optimize(objective, n_trials=1)
        trial = study.get_trials()[-1]
        assert trial.state == TrialState.PRUNED and trial.user_attrs[FAILURE_ATTR] == kind, trial.user_attrs
    assert loader._current is None  # neither was loaded


def test_a_sampler_that_cannot_be_steered_never_measures_a_dropped_candidate(tmp_path):
    space = _space(attn_implementation=["sdpa"], batch_size=[1, 2])
    b2 = Candidate("dynamic", "sdpa", "float32", 2)
    screened = space.drop({b2: "cannot fit (test)"})
    assert screened.values("batch_size") == [1] and screened.dropped == {"batch_size=2": "cannot fit (test)"}
    # A combination, not a whole choice: the distributions keep batch 2, random sampling can draw it.
    screened = _space(attn_implementation=["sdpa", "eager"], batch_size=[1, 2]).drop({b2: "cannot fit (test)"})
    assert screened.values("batch_size") == [1, 2] and screened.excluded_reason(b2) == "cannot fit (test)"
    storage = open_storage(StorageConfig("rdb", f"sqlite:///{tmp_path / 's.db'}"))
    study = open_study(storage, "t", optuna.samplers.RandomSampler(seed=0), {})
    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), CPU, seed=0)
    objective = Objective(
        screened, transformers_engine(), WORKLOAD, loader=TransformersLoader(loader), warmup=1, repetitions=3, seed=0
    )
    study.enqueue_trial(b2.params())
    study.optimize(objective, n_trials=1)
    outcome = outcome_of(study.get_trials()[-1], screened)
    assert outcome.state == TrialState.PRUNED
    assert outcome.reason == "dropped before the study: cannot fit (test)"
    trial = study.get_trials()[-1]
    assert trial.user_attrs[FAILURE_ATTR] == Failure.DROPPED and trial.constraints == {"runs": 1.0}
    assert loader._current is None  # ended before any load
    assert b2 not in remaining_candidates(study, screened)


def _stored_study(storage, name: str, dtypes: list[str], *, dropped: dict[str, str] | None = None) -> None:
    """A study as kvopt stored it before the screen: lossy dtypes in its distribution, refused in trials."""
    study = optuna.create_study(
        study_name=name, storage=storage, directions=["minimize", "maximize", "minimize"], load_if_exists=True
    )
    if dropped is not None:
        study.set_user_attr("dropped_choices", dropped)
    dists = {
        "cache_implementation": CategoricalDistribution(["dynamic"]),
        "attn_implementation": CategoricalDistribution(["sdpa"]),
        "dtype": CategoricalDistribution(dtypes),
        "batch_size": CategoricalDistribution([1, 2]),
    }
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={**BASE.params(), "dtype": dtypes[-1]},
            distributions=dists,
            user_attrs={"reason": "quality not measured: random weights", FAILURE_ATTR: Failure.QUALITY},
            constraints={"runs": 0.0, "quality": 1.0},
        )
    )


def test_a_study_stored_with_a_dropped_choice_still_opens_and_never_measures_it(tmp_path):
    storage = open_storage(StorageConfig("rdb", f"sqlite:///{tmp_path / 's.db'}"))
    _stored_study(storage, "old", ["float32", "bfloat16"])
    space = _space(attn_implementation=["sdpa"], dtype=["float32", "bfloat16"], batch_size=[1, 2])
    screened = screen(
        space,
        transformers_engine().predict_memory,
        WORKLOAD,
        weights="random",
        quality=QualityConfig(),
        memory_budget_bytes=None,
    )
    assert screened.values("dtype") == ["float32"]
    with pytest.raises(Exception, match="other choices for dtype"):
        check_compatible(storage, "old", screened)  # what Optuna itself would refuse mid-study
    resumed = resume_space(storage, "old", screened)
    assert check_compatible(storage, "old", resumed) == 1
    assert resumed.distributions()["dtype"] == CategoricalDistribution(["float32", "bfloat16"])
    assert [c.dtype for c in resumed.candidates()] == ["float32", "float32"]
    bf16 = Candidate("dynamic", "sdpa", "bfloat16", 2)
    assert resumed.excluded_reason(bf16) == screened.dropped["dtype=bfloat16"]
    # A choice offered now that the stored study dropped when it was made is dropped again.
    _stored_study(storage, "small", ["float32"], dropped={"dtype=bfloat16": "too slow here (test)"})
    allowed = _space(attn_implementation=["sdpa"], dtype=["float32", "bfloat16"], batch_size=[1, 2])
    again = resume_space(storage, "small", allowed)
    assert again.values("dtype") == ["float32"] and check_compatible(storage, "small", again) == 1
    assert again.dropped["dtype=bfloat16"] == "dropped when the study was made: too slow here (test)"
    # prepare() does the same for a stored study of its own name.
    url = f"sqlite:///{tmp_path / 'k.db'}"
    _stored_study(open_storage(StorageConfig("rdb", url)), "tiny-gpt2-ci-micro-cpu", ["float32", "bfloat16", "float16"])
    p = _prepare(f"storage.url={url}", f"scale.lock_dir={tmp_path}")
    assert p.existing_trials == 1 and p.space.values("dtype") == ["float32", "bfloat16", "float16"]
    assert {c.dtype for c in p.space.candidates()} == {"float32"} and "dtype=bfloat16" in p.space.dropped
    # Any other difference is still refused.
    other = _space(attn_implementation=["sdpa"], dtype=["float32", "float16"], batch_size=[1, 2])
    with pytest.raises(Exception, match="other choices for dtype"):
        check_compatible(storage, "old", resume_space(storage, "old", other))


def test_a_rerun_with_nothing_left_to_measure_says_so_and_runs_no_trial(tmp_path):
    args = dict(
        model="tiny-gpt2",
        profile="ci-micro",
        storage={"url": f"sqlite:///{tmp_path / 's.db'}"},
        scale={"lock_dir": str(tmp_path)},
        search_space={
            "dtype": ["float32", "bfloat16"],
            "attn_implementation": ["sdpa"],
            "cache_implementation": ["dynamic"],
            "batch_size": [1, 2],
        },
        pruning={"dominated": False},
        measure={"adaptive": False},
        confirm={"rounds": 0},
        study={"n_trials": 6},
    )
    first = kvopt.tune(console=Console(record=True, width=200), **args)
    # bfloat16 was dropped (random weights): both float32 candidates measured, nothing refused.
    assert sorted(r.label for r in first.results) == ["dynamic/sdpa/float32/b1", "dynamic/sdpa/float32/b2"]
    assert len(first.outcomes) == 2 and first.stopped_because.startswith("every candidate")
    console = Console(record=True, width=200)
    again = kvopt.tune(console=console, **args)
    out = console.export_text()
    assert (
        "nothing left to measure: every runnable candidate of the search space (2) has been measured; "
        "this run adds confirmation rounds"
    ) in out
    assert again.outcomes == [] and len(again.record.trials) == 2
