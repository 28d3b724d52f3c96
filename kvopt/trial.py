"""One trial, start to end: sample a candidate, measure it (or reuse), tell the study.

A candidate that fails never stops the study: the trial ends PRUNED with a one-line
``reason`` in its user attrs and the constraint ``runs`` = 1 (infeasible), so samplers
learn to avoid it; memory is released and the next trial starts. Ctrl-C ends the
current trial FAIL. The objective runs under ``Study.optimize``, so samplers that
stop a study themselves (grid) and Optuna's timeout work as designed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NoReturn

import optuna
from optuna.trial import TrialState

from kvopt.attrs import (
    BASELINE_ATTR,
    CANDIDATE_ATTR,
    CANDIDATE_SETTINGS_ATTR,
    CONSTRAINTS_ATTR,
    FAILURE_ATTR,
    FIDELITY_ATTR,
    NOISY_ATTR,
    QUALITY_ATTR,
    REASON_ATTR,
    REUSED_FROM_ATTR,
    Failure,
    failure_kind,
)
from kvopt.config import MeasureConfig, QualityConfig, TrialConfig
from kvopt.engines.base import Engine, Loader
from kvopt.failures import failure_reason
from kvopt.isolation import IsolatedFailure
from kvopt.measure.memory import free_device_memory
from kvopt.measurer import Measurer, make_measurer
from kvopt.metrics import METRICS, OBJECTIVES
from kvopt.protocol import SLOW_CALL_FACTOR
from kvopt.quality import QUALITY, Fidelity, excess, plan_quality, quality_label, violations
from kvopt.sampler import predict_call_seconds
from kvopt.screen import over_budget
from kvopt.select import Result, collect_results, pareto_front
from kvopt.space import Candidate, SearchSpace
from kvopt.workload import Workload

__all__ = ["TrialOutcome", "Objective", "outcome_of", "slo_constraints", "RUNS", "QUALITY"]


@dataclass
class TrialOutcome:
    number: int
    candidate: Candidate
    state: TrialState
    values: tuple[float, float, float] | None
    reason: str | None = None
    reused_from: int | None = None
    is_baseline: bool = False
    quality: str = ""  # the quality guard's short verdict (kvopt.quality.quality_label)


def outcome_of(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialOutcome:
    """What a finished trial says, read back from the study (the one source of truth)."""
    return TrialOutcome(
        number=trial.number,
        candidate=space.make_candidate(trial.params),
        state=trial.state,
        values=tuple(trial.values) if trial.values is not None else None,
        reason=trial.user_attrs.get(REASON_ATTR),
        reused_from=trial.user_attrs.get(REUSED_FROM_ATTR),
        is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
        quality=quality_label(trial.user_attrs),
    )


# Constraint names (Optuna: value <= 0 is feasible). "runs" > 0 means the candidate
# cannot run here (out of memory, unsupported, crashed): samplers learn to avoid it.
RUNS = "runs"


def slo_constraints(values: tuple[float, float, float], slo: dict[str, float | None]) -> dict[str, float]:
    """Constraint values for the profile's SLOs: how far past each limit (<= 0: met)."""
    named = dict(zip(METRICS, values))
    out = {RUNS: 0.0}
    for metric in OBJECTIVES:
        limit = slo.get(metric.slo_key)
        if limit is not None:
            out[f"slo_{metric.slo_key}"] = metric.slo_excess(named[metric.name], limit)
    return out


class Objective:
    """The study's objective: measure one sampled candidate, or decide it need not be.

    Before measuring, in this order (can it run, can it fit, can it be recommended): a
    candidate dropped before the study (``space.excluded``) ends at once; an identical
    candidate measured before is reused; one that failed before fails again at once; a
    larger batch than one that ran out of memory, or a candidate whose predicted memory
    exceeds the budget, is pruned before any load — and before the quality guard below.
    While measuring: a candidate that cannot reach the front is pruned early.
    With ``quality`` (the quality guard, :mod:`kvopt.quality`): a candidate that can change the
    model's answers has its fidelity measured first, and one over the bounds (or lossy and
    unverifiable with random weights) ends PRUNED with the ``quality`` constraint violated,
    never timed. Without it (replays, direct uses) no candidate is checked.
    """

    def __init__(
        self,
        space: SearchSpace,
        engine: Engine,
        workload: Workload,
        *,
        warmup: int,
        repetitions: int,
        seed: int,
        measure: MeasureConfig | None = None,
        trial: TrialConfig | None = None,
        slo: dict[str, float | None] | None = None,
        memory_budget_bytes: int | None = None,
        dominance_pruning: bool = True,
        measurer: Measurer | None = None,
        quality: QualityConfig | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.space = space
        self.engine = engine
        # Kept loaded between trials that can share a model (the engine says which).
        self.loader = loader or engine.loader()
        self.workload = workload
        self.device = engine.device
        self.warmup = warmup
        self.repetitions = repetitions
        self.seed = seed
        self.measure = measure or MeasureConfig(adaptive=False)
        self.trial = trial or TrialConfig()
        self.slo = slo or {}
        self.memory_budget_bytes = memory_budget_bytes
        self.dominance_pruning = dominance_pruning
        self.quality = quality
        # How candidates are measured: trial.isolation's choice unless one is given (replay).
        self.measurer = measurer or make_measurer(
            self.trial,
            engine,
            self.loader,
            workload,
            warmup=warmup,
            repetitions=repetitions,
            seed=seed,
            measure=self.measure,
            quality=quality,
        )

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        candidate = self.space.suggest(trial)
        trial.set_user_attr(CANDIDATE_ATTR, candidate.label)
        # Why the sampler proposed it (kvopt's profile sampler says; others do not).
        why = getattr(trial.study.sampler, "last_choice", {}).get(trial.number)
        if why:
            trial.set_user_attr("chosen_because", why)
        trial.set_user_attr(CANDIDATE_SETTINGS_ATTR, candidate.as_dict())
        try:
            # Dropped before the study (cannot fit or cannot be recommended): a sampler that
            # cannot be steered away (TPE, random, grid) proposed it; end it before any load.
            dropped = self.space.excluded_reason(candidate)
            if dropped is not None:
                self._infeasible(trial, f"dropped before the study: {dropped}", Failure.DROPPED)
            earlier = _finished_before(trial, candidate)
            if earlier is not None and earlier.state == TrialState.COMPLETE:
                return self._reuse(trial, earlier)
            if earlier is not None:
                self._fail_like(trial, earlier)
            cannot_fit = self._cannot_fit(trial, candidate)
            if cannot_fit is not None:
                self._infeasible(trial, *cannot_fit)
            fidelity_s = self._check_quality(trial, candidate)
            return self._measure(trial, candidate, fidelity_s)
        except KeyboardInterrupt:
            trial.set_user_attr(REASON_ATTR, "interrupted by the user (Ctrl-C)")
            trial.set_user_attr(FAILURE_ATTR, Failure.INTERRUPTED)
            raise

    def _reuse(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> tuple[float, float, float]:
        # The same settings measured again would only add cost: reuse, and say so.
        trial.set_user_attr(REUSED_FROM_ATTR, earlier.number)
        copied = ("ttft_ms_stats", "decode_tok_s_stats", "kv_cache_mb", "weights_mb", NOISY_ATTR, CONSTRAINTS_ATTR)
        for key in (*copied, FIDELITY_ATTR, QUALITY_ATTR):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        for key, value in earlier.constraints.items():
            trial.set_constraint(key, value)
        return tuple(earlier.values)

    def _fail_like(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> NoReturn:
        # Failures are deterministic here (unsupported, out of memory): say so, do not rerun.
        reason = f"same candidate as trial #{earlier.number}: {earlier.user_attrs.get(REASON_ATTR)}"
        trial.set_user_attr(REUSED_FROM_ATTR, earlier.number)
        if earlier.constraints.get(RUNS, 0.0) > 0 or earlier.constraints.get(QUALITY, 0.0) > 0:
            self._infeasible(trial, reason, Failure.REPEAT, dict(earlier.constraints))
        trial.set_user_attr(REASON_ATTR, reason)
        trial.set_user_attr(FAILURE_ATTR, Failure.REPEAT)
        raise optuna.TrialPruned(reason)

    def _infeasible(
        self, trial: optuna.Trial, reason: str, kind: str, constraints: dict[str, float] | None = None
    ) -> NoReturn:
        """End the trial PRUNED and tell the sampler this candidate cannot run here (or must not be used)."""
        constraints = constraints or {RUNS: 1.0}
        trial.set_user_attr(REASON_ATTR, reason)
        trial.set_user_attr(FAILURE_ATTR, kind)
        trial.set_user_attr(CONSTRAINTS_ATTR, constraints)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        free_device_memory(self.device)
        raise optuna.TrialPruned(reason)

    def _check_quality(self, trial: optuna.Trial, candidate: Candidate) -> float:
        """The quality guard, before any timed run: the seconds its fidelity measurement took.

        Ends the trial (PRUNED, ``quality`` constraint > 0) if the candidate is over the bounds,
        or lossy and unverifiable. Its fidelity and the guard's note are kept as user attrs.
        """
        if self.quality is None:
            return 0.0
        plan = plan_quality(candidate, self.space.baseline, self.engine.weights.kind, self.quality)
        trial.set_user_attr(QUALITY_ATTR, plan.as_dict())
        if plan.blocked is not None:
            self._infeasible(trial, plan.blocked, Failure.QUALITY, {RUNS: 0.0, QUALITY: 1.0})
        if not plan.measure:
            return 0.0
        start = time.perf_counter()
        earlier = _fidelity_at_other_batch(trial, candidate)
        try:
            # The fidelity prompts are one fixed batch: the candidate's batch size does not enter it.
            fidelity = earlier or self.measurer.fidelity(candidate, self.space.baseline)
        except IsolatedFailure as failure:
            self._record_failure(trial, start, failure.reason, failure.kind)
        except Exception as exc:  # a failing candidate must never stop the study
            failed = failure_reason(exc)
            self._record_failure(trial, start, failed.reason, failed.kind)
        trial.set_user_attr(FIDELITY_ATTR, fidelity.as_dict())
        broken = violations(fidelity, self.quality)
        verdict = "over the quality bounds: " + "; ".join(broken) if broken else "within the quality bounds"
        trial.set_user_attr(QUALITY_ATTR, {**plan.as_dict(), "note": f"{verdict} ({fidelity.summary()})"})
        if broken:
            trial.set_user_attr("setup_s", fidelity.seconds)
            self._infeasible(
                trial, f"{verdict}; not timed", Failure.QUALITY, {RUNS: 0.0, QUALITY: excess(fidelity, self.quality)}
            )
        return fidelity.seconds

    def _cannot_fit(self, trial: optuna.Trial, candidate: Candidate) -> tuple[str, str] | None:
        """(reason, failure kind) if this candidate cannot fit in memory, found without loading anything."""
        smaller = _oom_at_smaller_batch(trial, candidate)
        if smaller is not None:
            return (
                f"batch {candidate.batch_size} >= batch {smaller.params['batch_size']}, which ran "
                f"out of memory with the same settings in trial #{smaller.number}",
                Failure.LARGER_THAN_OOM,
            )
        prediction = self.engine.predict_memory(candidate, self.workload)
        for key, value in prediction.as_dict().items():
            trial.set_user_attr(key, value)
        too_big = over_budget(prediction, self.memory_budget_bytes)
        if too_big is not None:
            return f"{too_big}; not loaded", Failure.OVER_BUDGET
        return self._too_slow(trial, candidate)

    def _too_slow(self, trial: optuna.Trial, candidate: Candidate) -> tuple[str, str] | None:
        """A reason not to run a candidate whose one call would take several trial budgets.

        The call's time is predicted from the candidates measured so far (the performance
        model: neighbours along batch size, dtype, cache), credited generously — the lower
        end of one standard deviation on both TTFT and throughput — so only a candidate
        clearly beyond the budget is skipped. Needs the baseline measured first.
        """
        if not self.measure.adaptive:
            return None
        estimate = predict_call_seconds(trial.study, self.space, candidate, self.workload.new_tokens)
        limit = SLOW_CALL_FACTOR * self.measure.max_seconds
        if estimate is None or estimate[0] <= limit:
            return None
        low, typical, n = estimate
        return (
            f"too slow: one generate call predicted at {typical:.0f} s (at least {low:.0f} s; from {n} measured "
            f"candidates) > {SLOW_CALL_FACTOR:g} x measure.max_seconds ({limit:g} s); not loaded",
            Failure.TOO_SLOW,
        )

    def _front(self, trial: optuna.Trial) -> list[Result]:
        results = [r for r in collect_results(trial.study) if r.user_attrs.get(CONSTRAINTS_ATTR, {}).get(RUNS, 0) <= 0]
        return pareto_front(results)

    def _measure(
        self, trial: optuna.Trial, candidate: Candidate, fidelity_s: float = 0.0
    ) -> tuple[float, float, float]:
        start = time.perf_counter()
        front = self._front(trial) if self.dominance_pruning else []
        try:
            measured = self.measurer.measure(candidate, front, bounded=not trial.user_attrs.get(BASELINE_ATTR))
        except IsolatedFailure as failure:
            self._record_failure(trial, start, failure.reason, failure.kind)
        except Exception as exc:  # a failing candidate must never stop the study
            failed = failure_reason(exc)
            self._record_failure(trial, start, failed.reason, failed.kind)
        measurement = measured.measurement
        attrs: dict[str, Any] = measurement.to_attrs()
        attrs.update(
            {
                "isolation": self.measurer.name,
                "model_reused": measured.model_reused,
                "weights": self.engine.weights.kind,
                "load_s": measured.load_s,
                # Setup cost, kept apart from TTFT and throughput: load + first call (+ fidelity check).
                "setup_s": measured.load_s + measurement.first_call_s + fidelity_s,
                "trial_s": time.perf_counter() - start,
            }
        )
        predicted = trial.user_attrs.get("predicted_mem_mb")
        if predicted:
            attrs["predicted_mem_error_pct"] = (predicted / measurement.values[2] - 1.0) * 100.0
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if measurement.pruned_reason is not None:
            # Stopped early: it cannot reach the front. Feasible, just not worth measuring.
            trial.set_user_attr(REASON_ATTR, measurement.pruned_reason)
            trial.set_user_attr(FAILURE_ATTR, Failure.DOMINATED)
            trial.set_constraint(RUNS, 0.0)
            raise optuna.TrialPruned(measurement.pruned_reason)
        constraints = slo_constraints(measurement.values, self.slo)
        if FIDELITY_ATTR in trial.user_attrs and self.quality is not None:
            constraints[QUALITY] = excess(Fidelity.from_dict(trial.user_attrs[FIDELITY_ATTR]), self.quality)
        trial.set_user_attr(CONSTRAINTS_ATTR, constraints)
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        return measurement.values

    def _record_failure(self, trial: optuna.Trial, start: float, reason: str, kind: str) -> NoReturn:
        trial.set_user_attr("trial_s", time.perf_counter() - start)
        self._infeasible(trial, reason, kind)


def _but_batch(params: dict[str, Any]) -> dict[str, Any]:
    """A candidate's parameters without its batch size (settings that batch size does not change)."""
    return {k: v for k, v in params.items() if k != "batch_size"}


def _oom_at_smaller_batch(trial: optuna.Trial, candidate: Candidate) -> optuna.trial.FrozenTrial | None:
    """An earlier trial with the same settings that ran out of memory at a batch <= this one."""
    others = _but_batch(candidate.params())
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        if failure_kind(t.user_attrs) != Failure.OUT_OF_MEMORY:
            continue
        same = _but_batch(t.params) == others
        if same and t.params.get("batch_size", 0) <= candidate.batch_size:
            return t
    return None


def _fidelity_at_other_batch(trial: optuna.Trial, candidate: Candidate) -> Fidelity | None:
    """The fidelity an earlier trial measured for settings with the same outputs (another batch size, or
    llama.cpp's batches and threads: :meth:`kvopt.space.Candidate.fidelity_params`), if any."""
    same = candidate.fidelity_params()
    kind = type(candidate)
    for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if FIDELITY_ATTR not in t.user_attrs:
            continue
        try:
            other = kind.from_params(t.params)
        except KeyError:  # a trial of other parameters
            continue
        if other.fidelity_params() == same:
            return Fidelity.from_dict({**t.user_attrs[FIDELITY_ATTR], "seconds": 0.0})
    return None


def _finished_before(trial: optuna.Trial, candidate: Candidate) -> optuna.trial.FrozenTrial | None:
    """An earlier trial of the same candidate: a completed one first, else a failed one.

    A trial stopped by Ctrl-C says nothing about its candidate and is not counted.
    """
    params = candidate.params()
    failed = None
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for other in trial.study.get_trials(deepcopy=False, states=finished):
        if other.params != params or other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other
        kind = failure_kind(other.user_attrs)
        if failed is None and kind is not None and kind not in (Failure.INTERRUPTED, Failure.REPEAT):
            failed = other
    return failed
