"""The study loop on a real SQLite file: failures never stop it, duplicates are reused."""

from __future__ import annotations

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from conftest import transformers_engine
from kvopt.config import StorageConfig, validate
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.engine import TransformersLoader
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.workload import Workload
from kvopt.paths import conf_dir
from kvopt.runner import tune
from kvopt.space import SearchSpace
from kvopt.storage import open_storage
from kvopt.study import enqueue_baseline, open_study
from kvopt.trial import Objective, outcome_of

CPU = torch.device("cpu")


def _space(**choices) -> SearchSpace:
    base = Candidate("dynamic", "sdpa", "float32", 1)
    return transformers_space(
        cache_implementation=choices.get("cache", ["dynamic"]),
        attn_implementation=["sdpa"],
        dtype=["float32"],
        batch_size=choices.get("batch", [1]),
        baseline=base,
    )


class _Runner:
    """Runs one trial at a time through Study.optimize, as the CLI does."""

    def __init__(self, study, objective, space):
        self.study, self.objective, self.space = study, objective, space

    def run_one(self):
        self.study.optimize(self.objective, n_trials=1)
        finished = [t for t in self.study.get_trials() if t.state.is_finished()]
        return outcome_of(finished[-1], self.space)


def _runner(tmp_path, model_cfg, space):
    storage = open_storage(StorageConfig("rdb", f"sqlite:///{tmp_path / 'study.db'}"))
    study = open_study(storage, "t", optuna.samplers.RandomSampler(seed=0), {})
    loader = ModelLoader(model_cfg, WeightsSource("random", "test"), CPU, seed=0)
    objective = Objective(
        space,
        transformers_engine(model_cfg),
        Workload(16, 4),
        loader=TransformersLoader(loader),
        warmup=1,
        repetitions=2,
        seed=0,
    )
    return study, _Runner(study, objective, space)


def test_a_failing_candidate_is_recorded_and_the_study_goes_on(tmp_path, tiny_gpt2):
    # offloaded needs CUDA: on this CPU it fails inside generate, for real.
    space = _space(cache=["dynamic", "offloaded"])
    study, runner = _runner(tmp_path, tiny_gpt2, space)
    study.enqueue_trial({**space.baseline.params(), "cache_implementation": "offloaded"})
    enqueue_baseline(study, space)
    failed = runner.run_one()
    ok = runner.run_one()
    assert failed.state == TrialState.PRUNED
    assert failed.reason and "CUDA" in failed.reason
    assert ok.state == TrialState.COMPLETE and ok.is_baseline
    stored = study.get_trials()
    assert stored[0].user_attrs["reason"] == failed.reason
    assert stored[0].constraints == {"runs": 1.0}  # told to the sampler as infeasible
    assert stored[1].values == list(ok.values)
    # A candidate known to fail is not run again: the trial fails at once, saying why.
    study.enqueue_trial({**space.baseline.params(), "cache_implementation": "offloaded"})
    again = runner.run_one()
    assert again.state == TrialState.PRUNED
    assert again.reason.startswith(f"same candidate as trial #{failed.number}")
    assert "trial_s" not in study.get_trials()[-1].user_attrs  # nothing was measured


def test_the_same_candidate_is_not_measured_twice(tmp_path, tiny_gpt2):
    space = _space()
    study, runner = _runner(tmp_path, tiny_gpt2, space)
    first = runner.run_one()
    second = runner.run_one()
    assert second.reused_from == first.number
    assert second.values == first.values
    assert study.trials[1].user_attrs["reused_from"] == first.number


def test_a_loaded_model_is_reused_by_the_next_trial_with_the_same_dtype_and_attention(tmp_path, tiny_gpt2):
    space = _space(batch=[1, 2])
    study, runner = _runner(tmp_path, tiny_gpt2, space)
    study.enqueue_trial({**space.baseline.params(), "batch_size": 1})
    study.enqueue_trial({**space.baseline.params(), "batch_size": 2})
    runner.run_one()
    runner.run_one()
    assert study.trials[0].user_attrs["model_reused"] is False
    assert study.trials[1].user_attrs["model_reused"] is True


def _config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return validate(
            compose(
                config_name="config",
                overrides=[
                    "model=tiny-llama",
                    "profile=ci-micro",
                    f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
                    *overrides,
                ],
            )
        )


@pytest.mark.slow
def test_a_finite_space_stops_when_every_candidate_was_measured(tmp_path):
    cfg = _config(
        tmp_path,
        "sampler=grid",
        "study.n_trials=20",
        "search_space.cache_implementation=[dynamic,static]",
        "search_space.attn_implementation=[sdpa]",
        "search_space.dtype=[float32]",
        "search_space.batch_size=[1]",
    )
    result = tune(cfg, output_dir=tmp_path / "out")
    measured = {o.candidate for o in result.outcomes if o.reused_from is None}
    assert len(measured) == 2
    # The grid does not know the enqueued baseline covered its point: one reuse at most.
    assert len(result.outcomes) <= 3
    assert "every candidate" in result.stopped_because
    assert (tmp_path / "out" / "results.json").is_file()
    assert result.recommendation is not None
    assert result.outcomes[0].is_baseline


def test_study_timeout_stops_new_trials(tmp_path):
    cfg = _config(tmp_path, "study.n_trials=50", "study.timeout=0.001")
    result = tune(cfg)
    assert "timeout" in result.stopped_because
    assert len(result.outcomes) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "grid"])
def test_every_sampler_runs_a_study(tmp_path, sampler):
    cfg = _config(
        tmp_path,
        f"sampler={sampler}",
        "study.n_trials=3",
        "profile.repetitions=1",
        "search_space.batch_size=[1,2]",
        "search_space.dtype=[float32]",
    )
    result = tune(cfg)
    assert len(result.outcomes) == 3
    assert result.outcomes[0].is_baseline
    for o in result.outcomes:  # measured, or stopped early because it could not win
        assert o.values is not None or o.reason.startswith("dominated by trial #")


def test_pretrained_weights_are_loaded_when_present_locally(tmp_path, tiny_gpt2):
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from kvopt.engines.transformers.loading import build_config
    from kvopt.engines.transformers.source import resolve_model

    saved = tmp_path / "tiny-gpt2"
    AutoModelForCausalLM.from_config(build_config(tiny_gpt2)).save_pretrained(saved)
    source = resolve_model(replace(tiny_gpt2, hub_id=str(saved), weights="auto"))
    assert source.weights.kind == "pretrained"
    loaded, _ = ModelLoader(source.model, source.weights, CPU, seed=0).get("float32", "eager")
    assert loaded.weights == "pretrained"
    assert loaded.model.config._attn_implementation == "eager"


def test_random_weights_when_a_shipped_model_cannot_be_had(tiny_gpt2):
    from dataclasses import replace

    from kvopt.engines.transformers.source import resolve_model
    from kvopt.errors import KvoptError

    # The shipped YAML's own hub id: its architecture stands in, offline (HF_HUB_OFFLINE=1 in tests).
    shipped = replace(tiny_gpt2, weights="auto")
    source = resolve_model(shipped)
    assert (source.weights.kind, source.model) == ("random", shipped)
    with pytest.raises(KvoptError, match=r"model.weights: got 'pretrained'"):
        resolve_model(replace(shipped, weights="pretrained"))
