"""One trial, start to end: sample a candidate, measure it (or reuse), tell the study.

A candidate that fails never stops the study: the trial ends PRUNED (out of memory) or
FAIL (anything else) with a one-line ``reason`` in its user attrs, memory is released,
and the next trial starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from kvopt.engine.loading import ModelLoader, free_device_memory
from kvopt.engine.workload import Workload
from kvopt.protocol import measure_candidate
from kvopt.space import Candidate, SearchSpace
from kvopt.study import BASELINE_ATTR

__all__ = ["TrialOutcome", "TrialRunner", "failure_reason"]


@dataclass
class TrialOutcome:
    number: int
    candidate: Candidate
    state: TrialState
    values: tuple[float, float, float] | None
    reason: str | None = None
    reused_from: int | None = None
    is_baseline: bool = False


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
    return TrialState.FAIL, f"{type(exc).__name__}: {first}"


class TrialRunner:
    """Runs trials of one study with one model loader, workload and device."""

    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        loader: ModelLoader,
        workload: Workload,
        device: torch.device,
        *,
        warmup: int,
        repetitions: int,
        seed: int,
    ) -> None:
        self.study = study
        self.space = space
        self.loader = loader
        self.workload = workload
        self.device = device
        self.warmup = warmup
        self.repetitions = repetitions
        self.seed = seed

    def _measured_before(self, candidate: Candidate, number: int) -> optuna.trial.FrozenTrial | None:
        params = candidate.params()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if trial.number != number and trial.params == params:
                return trial
        return None

    def run_one(self) -> TrialOutcome:
        trial = self.study.ask()
        candidate = self.space.suggest(trial)
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        trial.set_user_attr("candidate", candidate.label)
        trial.set_user_attr("candidate_settings", candidate.as_dict())
        try:
            return self._measure_or_reuse(trial, candidate, is_baseline)
        except KeyboardInterrupt:
            trial.set_user_attr("reason", "interrupted by the user (Ctrl-C)")
            self.study.tell(trial, state=TrialState.FAIL)
            raise

    def _measure_or_reuse(
        self, trial: optuna.Trial, candidate: Candidate, is_baseline: bool
    ) -> TrialOutcome:
        earlier = self._measured_before(candidate, trial.number)
        if earlier is not None:
            # The same settings measured again would only add noise and cost: reuse.
            trial.set_user_attr("reused_from", earlier.number)
            for key in ("ttft_ms_stats", "decode_tok_s_stats", "kv_cache_mb", "weights_mb"):
                if key in earlier.user_attrs:
                    trial.set_user_attr(key, earlier.user_attrs[key])
            values = tuple(earlier.values)
            self.study.tell(trial, values)
            return TrialOutcome(
                trial.number, candidate, TrialState.COMPLETE, values,  # type: ignore[arg-type]
                reused_from=earlier.number, is_baseline=is_baseline,
            )
        start = time.perf_counter()
        try:
            loaded, reused_model = self.loader.get(candidate.dtype, candidate.attn_implementation)
            trial.set_user_attr("model_reused", reused_model)
            trial.set_user_attr("load_s", 0.0 if reused_model else loaded.load_s)
            trial.set_user_attr("weights", loaded.weights)
            measurement = measure_candidate(
                loaded,
                candidate,
                self.workload,
                self.device,
                warmup=self.warmup,
                repetitions=self.repetitions,
                seed=self.seed,
            )
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing candidate must never stop the study
            state, reason = failure_reason(exc)
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("trial_s", time.perf_counter() - start)
            free_device_memory(self.device)
            self.study.tell(trial, state=state)
            return TrialOutcome(trial.number, candidate, state, None, reason, is_baseline=is_baseline)
        attrs: dict[str, Any] = measurement.to_attrs()
        attrs["trial_s"] = time.perf_counter() - start
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        values = measurement.values
        self.study.tell(trial, list(values))
        return TrialOutcome(
            trial.number, candidate, TrialState.COMPLETE, values, is_baseline=is_baseline
        )
