"""A measurement backend that answers from a recorded grid, and studies run against it.

A replayed study runs kvopt's own trial objective (reuse of repeated candidates, failure
handling, memory prediction, dominance pruning, constraints) with one difference: its
measurer, :class:`ReplayMeasurer`, does not call ``generate`` but draws one of the candidate's recorded repetitions at
random (with replacement), so the replayed study sees the recorded noise. Repetitions
stop by kvopt's adaptive rule on a replayed clock that advances by each drawn run's
recorded duration; the seconds a real study would have spent measuring are summed.
Whole studies then run in seconds through the real sampler construction
(``kvopt.study.make_sampler``) and search space.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from kvopt.attrs import Failure, failure_kind
from kvopt.config import KvoptConfig, MeasureConfig, ModelConfig
from kvopt.confirm import score_interval
from kvopt.engines import DEFAULT_ENGINE, engine_class
from kvopt.engines.base import WeightsSource
from kvopt.engines.transformers.workload import make_workload
from kvopt.errors import ConfigError
from kvopt.explore import queue_unmeasured_after_repeat, tried_candidates
from kvopt.measure.adaptive import repeat_fixed, repeat_until_precise
from kvopt.measure.memory import MemoryReading
from kvopt.measurer import Measured, Measurer
from kvopt.metrics import DIRECTIONS, MB
from kvopt.protocol import Measurement, stop_rule
from kvopt.sampler import WarmStart, check_converged, warm_start_from
from kvopt.select import Result, can_win_check, collect_results, dominated_by, pareto_front, profile_score, recommend
from kvopt.space import Candidate, SearchSpace, candidate_key
from kvopt.study import enqueue_baseline, make_sampler
from kvopt.trial import Objective
from kvopt_bench.common import compose_config
from kvopt_bench.grid import grid_results, grid_rows_ok, space_from_grid, untimed_seconds
from kvopt_bench.hypervolume import REFERENCE, Normalizer, hypervolume_3d

__all__ = [
    "ReplayTable",
    "ReplayMeasurer",
    "model_option",
    "replay_config",
    "replay_objective",
    "StudyTrace",
    "recorded_profile",
    "replay_study",
    "replay_pruning_rule",
    "warm_start_from_grid",
]


# The model option a replay of a grid with a recorded model_config is composed with (replaced by it).
DEFAULT_MODEL_OPTION = "gpt2"


class ReplayTable:
    """A recorded grid, indexed by candidate, with its true front and hypervolume."""

    def __init__(self, grid: dict[str, Any]) -> None:
        self.grid = grid
        self.space: SearchSpace = space_from_grid(grid)
        self.engine = str(grid.get("engine", DEFAULT_ENGINE))
        self.rows = {candidate_key(r["params"]): r for r in grid["rows"]}
        missing = [c.label for c in self.space.candidates() if candidate_key(c.params()) not in self.rows]
        if missing:
            raise ConfigError(
                [
                    f"grid: {len(missing)} candidates of its search space have no row (e.g. "
                    f"{missing[0]}); allowed: a complete grid from scripts/record_grid.py"
                ]
            )
        self.new_tokens = int(grid["workload"]["new_tokens"])
        results = grid_results(grid)
        self.truth = {candidate_key(r.params): r.values for r in results}
        self.normalize = Normalizer(list(self.truth.values()))
        self.front_keys = {candidate_key(r.params) for r in pareto_front(results)}
        self.full_hv = self.hypervolume(self.truth)
        # The profile score (kvopt.select.profile_score) against the table's baseline.
        weights = grid["profile_config"]["weights"]
        base = next(r.values for r in results if r.is_baseline)
        self.scores = {candidate_key(r.params): profile_score(r, base, weights) for r in results}
        self.best_score = max(self.scores.values())
        self.best_key = max(self.scores, key=lambda k: self.scores[k])
        # The grid's own noise at its best: the ~95% band of the best's score from the
        # medians' CIs of its recorded runs (kvopt.confirm.score_interval's rule).
        best = next(r for r in results if candidate_key(r.params) == self.best_key)
        low, _ = score_interval(best, base, weights)
        self.best_noise = self.best_score - low

    def within_noise_of_best(self, key: Any) -> bool:
        """Is this candidate's true score within the grid's noise of the best's?"""
        return self.best_score - self.scores[key] <= self.best_noise + 1e-12

    def hypervolume(self, keys: Any) -> float:
        """Hypervolume (normalised space, reference ``REFERENCE``) of these candidates' true values."""
        return hypervolume_3d([self.normalize(self.truth[k]) for k in keys if k in self.truth], REFERENCE)

    def run_seconds(self, row: dict[str, Any], i: int) -> float:
        """How long recorded repetition ``i`` took: prefill (TTFT) plus decode."""
        batch = row["settings"]["batch_size"]
        return row["ttft_ms"][i] / 1000.0 + batch * (self.new_tokens - 1) / row["decode_tok_s"][i]


class ReplayedFailure(RuntimeError):
    """The recorded grid says this candidate could not run (its reason is the message)."""


class ReplayMeasurer(Measurer):
    """Measures a candidate by drawing its runs from the recorded table (nothing is loaded)."""

    name = "replay"

    def __init__(self, table: ReplayTable, rng: random.Random, measure: MeasureConfig, repetitions: int) -> None:
        self.table = table
        self.rng = rng
        self.measure_cfg = measure
        self.repetitions = repetitions

    def measure(self, candidate: Candidate, front: list[Result], *, bounded: bool = True) -> Measured:
        row = self.table.rows[candidate_key(candidate.params())]
        if row.get("status", "ok") != "ok":
            raise ReplayedFailure(row["reason"])
        spent = {"s": untimed_seconds(row)}

        def once() -> dict[str, float]:
            i = self.rng.randrange(len(row["ttft_ms"]))
            spent["s"] += self.table.run_seconds(row, i)
            return {"ttft_ms": row["ttft_ms"][i], "decode_tok_s": row["decode_tok_s"][i]}

        def clock() -> float:
            return spent["s"]

        can_win = can_win_check(front, self.measure_cfg.rel_precision) if front else None
        check = None if can_win is None else (lambda samples: can_win(samples, row["peak_mem_mb"]))
        if self.measure_cfg.adaptive:
            result = repeat_until_precise(once, stop_rule(self.measure_cfg, self.repetitions), clock=clock, check=check)
        else:
            result = repeat_fixed(once, self.repetitions, check=check)
        measurement = Measurement(
            candidate=candidate,
            ttft_ms=result.samples["ttft_ms"],
            decode_tok_s=result.samples["decode_tok_s"],
            memory=MemoryReading(int(row["peak_mem_mb"] * MB), "replayed from the recorded grid"),
            weights_bytes=int(row.get("weights_mb", 0.0) * MB),
            kv_cache_bytes=int(row.get("kv_cache_mb", 0.0) * MB),
            first_call_s=row.get("first_call_s", 0.0),
            stopped_because=result.stopped_because,
            noisy=result.noisy,
            pruned_reason=result.pruned_reason,
            extra={"replay_s": spent["s"]},
        )
        return Measured(measurement, 0.0, True)


@dataclass
class StudyTrace:
    """One replayed study, trial by trial."""

    sampler: str
    seed: int
    pruning: bool
    hv_ratio: list[float]  # after each trial: found front's hypervolume / the table's
    seconds: list[float]  # after each trial: replayed measurement seconds so far
    true_front_pruned: int  # dominance-pruned trials whose candidate is on the table's true front
    dominance_pruned: int
    # after each trial: how far the best profile score found is below the table's best,
    # as exp(gap) - 1 in percent (0: the profile's best candidate has been found)
    shortfall_pct: list[float]
    # after each trial: distinct candidates tried so far. A trial that repeats an earlier
    # candidate reuses (or repeats the failure of) its measurement: a trial, not a measurement.
    measured: list[int] = field(default_factory=list)
    # With the convergence stop: the trial it stopped after (None: it did not stop), and how
    # far the study's recommendation (by its own measurements) is below the table's best.
    stopped_at: int | None = None
    recommended_shortfall_pct: float | None = None
    recommended_is_best: bool | None = None  # within the grid's own noise of its best

    def trials_to(self, level: float) -> int | None:
        """Trials needed to reach ``level`` of the table's hypervolume (None: never)."""
        return next((i + 1 for i, r in enumerate(self.hv_ratio) if r >= level - 1e-12), None)

    def measurements_to(self, level: float) -> int | None:
        """Candidates measured until ``level`` of the table's hypervolume (None: never)."""
        n = self.trials_to(level)
        return None if n is None else self.measured[n - 1]

    def trials_to_score(self, within_pct: float) -> int | None:
        """Trials needed to find a candidate within ``within_pct`` of the best profile score."""
        return next((i + 1 for i, s in enumerate(self.shortfall_pct) if s <= within_pct + 1e-9), None)

    def measurements_to_score(self, within_pct: float) -> int | None:
        """Candidates measured until one within ``within_pct`` of the best profile score."""
        n = self.trials_to_score(within_pct)
        return None if n is None else self.measured[n - 1]

    def seconds_to(self, level: float) -> float | None:
        n = self.trials_to(level)
        return None if n is None else self.seconds[n - 1]


def _exhausted(space: SearchSpace, seed: int, stop_rule: Any = None, stopped: list[int] | None = None) -> Any:
    """As kvopt's runner does: stop once every candidate has been tried (or, with
    ``stop_rule``, once it says converged); after a repeat, queue an unmeasured candidate
    (kvopt.explore)."""

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if len(tried_candidates(study)) >= space.size:
            study.stop()
        elif stop_rule is not None and stop_rule(study) is not None:
            if stopped is not None:
                stopped.append(trial.number + 1)
            study.stop()
        else:
            queue_unmeasured_after_repeat(study, space, trial, random.Random(seed + trial.number))

    return callback


def model_option(grid: dict[str, Any]) -> str:
    """The ``model=`` option a replay's config is composed with.

    A grid recorded with its resolved model (``model_config``: a GGUF's figures) has a model
    that is no shipped option (``tiny`` for ``tiny.gguf``); the replay composes with the
    default option and then uses the recorded model (:func:`replay_objective`).
    """
    return DEFAULT_MODEL_OPTION if "model_config" in grid else str(grid["model"])


def replay_config(grid: dict[str, Any], sampler: str) -> KvoptConfig:
    """The config a replay of ``grid`` with ``sampler`` runs under: the recording's overrides and profile.

    A grid with its resolved model recorded (``model_config``) is composed with the default
    option, so its architecture and name overrides (a widened Llama) are left out: the
    recorded model replaces the option's (:func:`replay_objective`), whose architecture may
    not have their keys.
    """
    replaced = ("model.architecture.", "model.name=") if "model_config" in grid else ()
    overrides = [o for o in grid["overrides"] if not o.startswith(replaced)]
    return compose_config(
        model_option(grid), grid["profile"], [*overrides, *recorded_profile(grid), f"sampler={sampler}"]
    )


def recorded_profile(grid: dict[str, Any]) -> list[str]:
    """Overrides that give a replay the profile the grid was recorded with: its weights and its shape.

    A replay scores and samples with the config's profile; the shipped profiles change
    (issue 14 made them mixes with new weights), the recorded grids do not, so a replay
    pins the recorded weights, the one shape the grid measured (already fit to the model) and its
    shared prefix.
    """
    workload = grid["workload"]
    return [
        *(f"profile.weights.{m}={w}" for m, w in grid["profile_config"]["weights"].items()),
        f"profile.context_lengths=[{workload['prompt_tokens']}]",
        f"profile.output_lengths=[{workload['new_tokens']}]",
        # Grids recorded before prefix reuse have none: their prompts were not built around one.
        f"profile.shared_prefix_tokens={workload.get('shared_prefix_tokens', 0)}",
    ]


def replay_objective(
    table: ReplayTable, cfg: KvoptConfig, seed: int, pruning: bool
) -> tuple[KvoptConfig, Objective, Any]:
    """kvopt's trial objective against the table, as a study runs it (nothing is loaded), and the memory prior.

    Returns the config with the model as the recording resolved it (``model_config``: a GGUF's
    own figures), the objective, and the engine's memory prior for the sampler.
    """
    if "model_config" in table.grid:
        cfg = dataclasses.replace(cfg, model=ModelConfig(**table.grid["model_config"]))
    workload = make_workload(cfg.profile, cfg.model)
    engine = engine_class(table.engine)(
        cfg.model, WeightsSource("random", "replayed: nothing is loaded"), torch.device("cpu"), seed
    )
    objective = Objective(
        table.space,
        engine,
        workload,
        warmup=cfg.profile.warmup,
        repetitions=cfg.profile.repetitions,
        seed=seed,
        measure=cfg.measure,
        slo=cfg.profile.slo,
        memory_budget_bytes=None,
        dominance_pruning=pruning,
        measurer=ReplayMeasurer(table, random.Random(seed), cfg.measure, cfg.profile.repetitions),
    )
    return cfg, objective, engine.memory_prior(workload)


def replay_study(
    table: ReplayTable,
    cfg: KvoptConfig,
    seed: int,
    *,
    n_trials: int,
    pruning: bool,
    converge: bool = False,
    warm_start: WarmStart | None = None,
) -> StudyTrace:
    """Run one study of ``cfg.sampler`` (seeded ``seed``) against the table, baseline first.

    ``converge``: stop by kvopt's convergence rule (as ``study.converge`` does), recording
    where; ``warm_start``: start from another study, as ``study.warm_start`` does.
    """
    space = table.space
    cfg, objective, prior = replay_objective(table, cfg, seed, pruning)
    warm = warm_start or WarmStart()
    sampler = make_sampler(
        cfg.sampler,
        seed,
        space,
        cfg.profile,
        memory_prior_mb=prior,
        warm_start=warm.observations,
        warm_first=warm.first,
    )
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
    enqueue_baseline(study, space)
    stopped: list[int] = []
    rule = None
    if converge:

        def rule(s: optuna.Study) -> Any:
            return check_converged(s, space, cfg.profile, memory_prior_mb=prior, warm_start=warm.observations)

    study.optimize(
        objective, n_trials=n_trials, callbacks=[_exhausted(space, seed, rule, stopped)], gc_after_trial=False
    )
    found: set[Any] = set()
    tried: set[Any] = set()
    hv, seconds, shortfall, measured, spent, wrong, pruned = [], [], [], [], 0.0, 0, 0
    best = -math.inf
    for t in study.get_trials(deepcopy=False):
        key = candidate_key(t.params)
        tried.add(key)
        spent += float(t.user_attrs.get("replay_s", 0.0)) if "reused_from" not in t.user_attrs else 0.0
        if t.state == TrialState.COMPLETE:
            found.add(key)
            best = max(best, table.scores.get(key, -math.inf))
        elif failure_kind(t.user_attrs) == Failure.DOMINATED:
            pruned += 1
            wrong += key in table.front_keys
        hv.append(table.hypervolume(found) / table.full_hv if table.full_hv > 0 else 1.0)
        seconds.append(spent)
        measured.append(len(tried))
        shortfall.append((math.exp(table.best_score - best) - 1.0) * 100.0 if best > -math.inf else math.inf)
    trace = StudyTrace(cfg.sampler.name, seed, pruning, hv, seconds, wrong, pruned, shortfall, measured)
    trace.stopped_at = stopped[0] if stopped else None
    rec = recommend(collect_results(study), cfg.profile)
    if rec is not None:
        key = candidate_key(rec.result.params)
        trace.recommended_shortfall_pct = (math.exp(table.best_score - table.scores[key]) - 1) * 100
        trace.recommended_is_best = table.within_noise_of_best(key)
    return trace


def warm_start_from_grid(other: ReplayTable, space: SearchSpace, profile: Any) -> WarmStart:
    """A warm start made of another recorded grid, as ``study.warm_start`` makes one of a study.

    The other grid's rows enter as complete trials (full-table medians and CIs) of a study
    in memory; :func:`kvopt.sampler.warm_start_from` then reads it exactly as a run does.
    """
    study = optuna.create_study(directions=list(DIRECTIONS))
    for result in grid_results(other.grid):
        study.add_trial(
            optuna.trial.create_trial(
                params=result.params,
                values=list(result.values.values()),
                distributions={k: v for k, v in other.space.distributions().items() if k in result.params},
                user_attrs={
                    k: v
                    for k, v in result.user_attrs.items()
                    if k in ("baseline", "ttft_ms_stats", "decode_tok_s_stats")
                },
            )
        )
    return warm_start_from(study, space, profile)


def replay_pruning_rule(grid: dict[str, Any], seeds: int, margin: float) -> dict[str, Any]:
    """kvopt's dominance rule replayed on the recorded runs in ``seeds`` random orders.

    Baseline first, as in a study; each candidate's recorded runs arrive in recorded
    order and the rule (``kvopt.select.dominated_by``, the one trials use) is asked after
    each. Reports the share of timed runs saved and how often a candidate of the true
    front (medians of all recorded runs) was pruned — which must be never.
    """
    rows = grid_rows_ok(grid)
    results = grid_results(grid)  # results[i] is rows[i] at its full-table medians
    truth = {r.number for r in pareto_front(results)}
    baseline = next(i for i, row in enumerate(rows) if row["baseline"])
    total_runs = sum(len(row["ttft_ms"]) for row in rows)
    saved, pruned, wrong = [], [], []
    for seed in range(seeds):
        order = [i for i in range(len(rows)) if i != baseline]
        random.Random(seed).shuffle(order)
        completed: list[Result] = []
        runs_used = n_pruned = n_wrong = 0
        for i in [baseline, *order]:
            row = rows[i]
            front = pareto_front(completed)
            n = len(row["ttft_ms"])
            stopped_at = n
            for k in range(1, n + 1):
                samples = {"ttft_ms": row["ttft_ms"][:k], "decode_tok_s": row["decode_tok_s"][:k]}
                if dominated_by(front, samples, row["peak_mem_mb"], margin=margin) is not None:
                    stopped_at = k
                    break
            runs_used += stopped_at
            if stopped_at < n:
                n_pruned += 1
                n_wrong += i in truth
            else:
                completed.append(results[i])
        saved.append(1 - runs_used / total_runs)
        pruned.append(n_pruned)
        wrong.append(n_wrong)
    return {
        "candidates": len(rows),
        "true_front": sorted(truth),
        "seeds": seeds,
        "margin": margin,
        "runs_saved_median": statistics.median(saved),
        "runs_saved_min": min(saved),
        "runs_saved_max": max(saved),
        "pruned_median": statistics.median(pruned),
        "true_front_pruned_total": sum(wrong),
    }
