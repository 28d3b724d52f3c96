"""Search: pruning before load, dominance pruning, SLO constraints, learning from OOM."""

from __future__ import annotations

import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from conftest import model_config, transformers_engine
from kvopt.config import StorageConfig
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.engine import TransformersLoader
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.predict import predict_memory
from kvopt.engines.transformers.workload import Workload
from kvopt.measure.adaptive import StopRule, repeat_until_precise
from kvopt.select import Result, can_win_check, dominated_by
from kvopt.space import SearchSpace
from kvopt.storage import open_storage
from kvopt.study import open_study
from kvopt.trial import Objective, outcome_of, slo_constraints

CPU = torch.device("cpu")


def _space(batches=(1, 4, 8)) -> SearchSpace:
    return transformers_space(
        cache_implementation=["dynamic"],
        attn_implementation=["sdpa"],
        dtype=["float32"],
        batch_size=list(batches),
        baseline=Candidate("dynamic", "sdpa", "float32", 1),
    )


def _objective(tmp_path, space, **kwargs):
    storage = open_storage(StorageConfig("rdb", f"sqlite:///{tmp_path / 's.db'}"))
    study = open_study(storage, "t", optuna.samplers.RandomSampler(seed=0), {})
    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), CPU, seed=0)
    objective = Objective(
        space,
        transformers_engine(),
        Workload(16, 4),
        loader=TransformersLoader(loader),
        warmup=1,
        repetitions=3,
        seed=0,
        **kwargs,
    )
    return study, loader, objective


def _run(study, objective, space, params):
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1)
    return outcome_of(study.get_trials()[-1], space)


def test_an_oversized_batch_is_pruned_before_any_model_is_loaded(tmp_path):
    space = _space()
    study, loader, objective = _objective(tmp_path, space, memory_budget_bytes=2**19)
    outcome = _run(study, objective, space, {**space.baseline.params(), "batch_size": 8})
    assert outcome.state == TrialState.PRUNED
    assert outcome.reason.startswith("predicted ") and "> memory budget 0.5 MB" in outcome.reason
    assert loader._current is None  # nothing was loaded
    trial = study.get_trials()[-1]
    assert trial.constraints == {"runs": 1.0}
    assert trial.user_attrs["predicted_mem_mb"] > 0.5


def test_a_batch_larger_than_one_that_ran_out_of_memory_is_not_run(tmp_path):
    space = _space()
    study, loader, objective = _objective(tmp_path, space)
    dists = {k: CategoricalDistribution(v) for k, v in space.choices().items()}
    # A recorded out-of-memory at batch 4 (as a GPU would give): batch 8 must not run.
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            params={**space.baseline.params(), "batch_size": 4},
            distributions=dists,
            user_attrs={"reason": "out of memory: CUDA out of memory"},
        )
    )
    outcome = _run(study, objective, space, {**space.baseline.params(), "batch_size": 8})
    assert outcome.state == TrialState.PRUNED
    assert outcome.reason == ("batch 8 >= batch 4, which ran out of memory with the same settings in trial #0")
    assert loader._current is None
    smaller = _run(study, objective, space, {**space.baseline.params(), "batch_size": 1})
    assert smaller.state == TrialState.COMPLETE  # smaller batches still run


def test_slo_constraints_are_set_on_the_trial_and_in_user_attrs(tmp_path):
    space = _space()
    slo = {"max_ttft_ms": 1e-6, "min_decode_tok_s": None, "max_mem_mb": 1e6}
    study, _, objective = _objective(tmp_path, space, slo=slo)
    outcome = _run(study, objective, space, space.baseline.params())
    trial = study.get_trials()[-1]
    assert outcome.state == TrialState.COMPLETE
    assert trial.constraints["slo_max_ttft_ms"] > 0  # violated: TTFT above 1e-6 ms
    assert trial.constraints["slo_max_mem_mb"] < 0
    assert trial.user_attrs["constraints"] == trial.constraints


def test_slo_constraint_values():
    c = slo_constraints((100.0, 50.0, 500.0), {"max_ttft_ms": 80.0, "min_decode_tok_s": 60.0, "max_mem_mb": None})
    assert c == {"runs": 0.0, "slo_max_ttft_ms": 20.0, "slo_min_decode_tok_s": 10.0}


def _r(number, ttft, tput, mem):
    return Result(number, {}, f"c{number}", {"ttft_ms": ttft, "decode_tok_s": tput, "peak_mem_mb": mem})


def test_dominance_needs_the_front_to_beat_the_best_run_by_a_margin():
    front = [_r(0, 10.0, 100.0, 50.0)]
    slow = {"ttft_ms": [20.0, 21.0, 19.0], "decode_tok_s": [50.0, 52.0, 49.0]}
    assert dominated_by(front, slow, 60.0, margin=0.05).number == 0
    # Needs less memory: not dominated, whatever its timings.
    assert dominated_by(front, slow, 40.0, margin=0.05) is None
    # One run close to the front's TTFT is enough to keep measuring.
    close = {"ttft_ms": [20.0, 10.2, 19.0], "decode_tok_s": [50.0, 52.0, 49.0]}
    assert dominated_by(front, close, 60.0, margin=0.05) is None
    # Too few runs to judge.
    assert dominated_by(front, {k: v[:2] for k, v in slow.items()}, 60.0, margin=0.05) is None


def test_a_dominated_candidate_stops_measuring_early():
    check = can_win_check([_r(3, 10.0, 100.0, 50.0)], margin=0.05)
    calls = []

    def run_once():
        calls.append(1)
        return {"ttft_ms": 30.0, "decode_tok_s": 20.0}

    result = repeat_until_precise(run_once, StopRule(max_repetitions=20), check=lambda s: check(s, 80.0))
    assert len(calls) == 3
    assert result.pruned_reason.startswith("dominated by trial #3")


def test_predicted_memory_follows_batch_dtype_and_cache():
    cfg = model_config("gpt2")
    w = Workload(512, 32)
    b1 = predict_memory(cfg, Candidate("dynamic", "sdpa", "float32", 1), w)
    b8 = predict_memory(cfg, Candidate("dynamic", "sdpa", "float32", 8), w)
    bf16 = predict_memory(cfg, Candidate("dynamic", "sdpa", "bfloat16", 1), w)
    assert b8.total_bytes > b1.total_bytes
    assert bf16.weights_bytes * 2 == b1.weights_bytes
    # GPT-2 small: 124,439,808 parameters (tied embeddings counted once).
    assert b1.weights_bytes == 124_439_808 * 4
    assert b1.kv_bytes == 2 * 12 * 12 * 64 * (512 + 32 - 1) * 1 * 4


def test_prediction_is_close_to_the_measured_peak_on_a_tiny_model(tmp_path):
    space = _space(batches=(1, 8))
    study, _, objective = _objective(tmp_path, space)
    for batch in (1, 8):
        _run(study, objective, space, {**space.baseline.params(), "batch_size": batch})
    for trial in study.get_trials():
        # Documented honestly: the model errs high rather than low.
        assert -25.0 <= trial.user_attrs["predicted_mem_error_pct"] <= 300.0


def test_the_pruning_replay_on_a_recorded_grid_never_prunes_the_true_front():
    from kvopt_bench.replay import replay_pruning_rule

    rng = __import__("random").Random(0)

    def row(name, ttft, tput, mem, baseline=False):
        noise = lambda v: [v * rng.uniform(0.97, 1.03) for _ in range(8)]  # noqa: E731
        return {
            "candidate": name,
            "baseline": baseline,
            "ttft_ms": noise(ttft),
            "decode_tok_s": noise(tput),
            "peak_mem_mb": mem,
        }

    grid = {
        "model": "synthetic",
        "rows": [
            row("base", 10, 100, 50, baseline=True),
            row("fast", 5, 200, 50),
            row("slow", 20, 50, 60),
            row("slower", 30, 40, 70),
            row("big", 40, 800, 200),
        ],
    }
    result = replay_pruning_rule(grid, seeds=10, margin=0.05)
    assert result["true_front_pruned_total"] == 0
    assert set(result["true_front"]) == {1, 4}
    assert 0 < result["runs_saved_median"] < 1


def test_the_memory_budget_reaches_the_study():
    from hydra import compose, initialize_config_dir

    from kvopt.config import validate
    from kvopt.paths import conf_dir
    from kvopt.runner import prepare

    def prepared(*overrides):
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
            cfg = validate(
                compose(
                    config_name="config",
                    overrides=["model=tiny-gpt2", "profile=ci-micro", "storage=memory", *overrides],
                )
            )
        return prepare(cfg)

    assert prepared("pruning.memory_budget_mb=0.5").memory_budget_bytes == 2**19
    assert prepared().memory_budget_bytes > 2**20  # default: what the machine has free
