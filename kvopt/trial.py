"""One trial, start to end: sample a candidate, measure it (or reuse), tell the study.

A candidate that fails never stops the study: the trial ends PRUNED (out of memory) or
FAIL (anything else) with a one-line ``reason`` in its user attrs, memory is released,
and the next trial starts. The objective runs under ``Study.optimize``, so samplers that
stop a study themselves (grid) and Optuna's timeout work as designed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, NoReturn

import optuna
import torch
from optuna.trial import TrialState

from kvopt.config import MeasureConfig, TrialConfig
from kvopt.engine.loading import ModelLoader, free_device_memory
from kvopt.engine.workload import Workload
from kvopt.failures import failure_reason
from kvopt.isolation import IsolatedFailure, TrialJob, run_isolated
from kvopt.protocol import Measurement, measure_candidate
from kvopt.space import Candidate, SearchSpace
from kvopt.study import BASELINE_ATTR

__all__ = ["TrialOutcome", "Objective", "CandidateFailed", "outcome_of"]


@dataclass
class TrialOutcome:
    number: int
    candidate: Candidate
    state: TrialState
    values: tuple[float, float, float] | None
    reason: str | None = None
    reused_from: int | None = None
    is_baseline: bool = False


class CandidateFailed(Exception):
    """A candidate could not be measured; Optuna records the trial as FAIL and goes on."""


def outcome_of(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialOutcome:
    """What a finished trial says, read back from the study (the one source of truth)."""
    return TrialOutcome(
        number=trial.number,
        candidate=space.make_candidate(trial.params),
        state=trial.state,
        values=tuple(trial.values) if trial.values is not None else None,  # type: ignore[arg-type]
        reason=trial.user_attrs.get("reason"),
        reused_from=trial.user_attrs.get("reused_from"),
        is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
    )


class Objective:
    """The study's objective: measure one sampled candidate (or reuse its earlier result)."""

    def __init__(
        self,
        space: SearchSpace,
        loader: ModelLoader,
        workload: Workload,
        device: torch.device,
        *,
        warmup: int,
        repetitions: int,
        seed: int,
        measure: MeasureConfig | None = None,
        trial: TrialConfig | None = None,
    ) -> None:
        self.space = space
        self.loader = loader
        self.workload = workload
        self.device = device
        self.warmup = warmup
        self.repetitions = repetitions
        self.seed = seed
        self.measure = measure or MeasureConfig(adaptive=False)
        self.trial = trial or TrialConfig()

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        candidate = self.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.label)
        trial.set_user_attr("candidate_settings", candidate.as_dict())
        try:
            earlier = _finished_before(trial, candidate)
            if earlier is not None and earlier.state == TrialState.COMPLETE:
                return self._reuse(trial, earlier)
            if earlier is not None:
                return self._fail_like(trial, earlier)
            return self._measure(trial, candidate)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted by the user (Ctrl-C)")
            raise

    def _reuse(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> tuple[float, float, float]:
        # The same settings measured again would only add cost: reuse, and say so.
        trial.set_user_attr("reused_from", earlier.number)
        for key in ("ttft_ms_stats", "decode_tok_s_stats", "kv_cache_mb", "weights_mb", "noisy"):
            if key in earlier.user_attrs:
                trial.set_user_attr(key, earlier.user_attrs[key])
        return tuple(earlier.values)  # type: ignore[return-value]

    def _fail_like(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> tuple[float, float, float]:
        # Failures are deterministic here (unsupported combination, out of memory): say so, do not rerun.
        reason = f"same candidate as trial #{earlier.number}: {earlier.user_attrs.get('reason')}"
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("reused_from", earlier.number)
        if earlier.state == TrialState.PRUNED:
            raise optuna.TrialPruned(reason)
        raise CandidateFailed(reason)

    def _measure(self, trial: optuna.Trial, candidate: Candidate) -> tuple[float, float, float]:
        start = time.perf_counter()
        try:
            if self.trial.isolation == "process":
                measurement, load_s = self._measure_in_process(candidate)
                reused_model = False
            else:
                measurement, load_s, reused_model = self._measure_inline(candidate)
        except IsolatedFailure as failure:
            self._record_failure(trial, start, failure.state, failure.reason)
        except Exception as exc:  # a failing candidate must never stop the study
            self._record_failure(trial, start, *failure_reason(exc))
        attrs: dict[str, Any] = measurement.to_attrs()
        attrs.update(
            {
                "isolation": self.trial.isolation,
                "model_reused": reused_model,
                "weights": self.loader.source.kind,
                "load_s": load_s,
                # Setup cost, kept apart from TTFT and throughput: load + first call.
                "setup_s": load_s + measurement.first_call_s,
                "trial_s": time.perf_counter() - start,
            }
        )
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return measurement.values

    def _measure_inline(self, candidate: Candidate) -> tuple[Measurement, float, bool]:
        loaded, reused_model = self.loader.get(candidate.dtype, candidate.attn_implementation)
        measurement = measure_candidate(
            loaded, candidate, self.workload, self.device,
            warmup=self.warmup, repetitions=self.repetitions, seed=self.seed, measure=self.measure,
        )
        return measurement, 0.0 if reused_model else loaded.load_s, reused_model

    def _measure_in_process(self, candidate: Candidate) -> tuple[Measurement, float]:
        job = TrialJob(
            model=self.loader.model_cfg,
            weights=self.loader.source,
            device=str(self.device),
            candidate=candidate,
            workload=self.workload,
            warmup=self.warmup,
            repetitions=self.repetitions,
            seed=self.seed,
            measure=self.measure,
        )
        return run_isolated(job, self.trial.timeout_s)

    def _record_failure(self, trial: optuna.Trial, start: float, state: TrialState, reason: str) -> NoReturn:
        trial.set_user_attr("reason", reason)
        trial.set_user_attr("trial_s", time.perf_counter() - start)
        free_device_memory(self.device)
        if state == TrialState.PRUNED:
            raise optuna.TrialPruned(reason)
        raise CandidateFailed(reason)


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
        reason = str(other.user_attrs.get("reason", ""))
        if failed is None and reason and not reason.startswith(("interrupted", "same candidate")):
            failed = other
    return failed
