"""From measured trials to a decision: Pareto front, profile score, recommendation, gains.

The profile score of a candidate is the weighted sum of its log-ratios to the baseline,
signed so that higher is better on every objective::

    score = w_ttft * ln(ttft_base / ttft) + w_tput * ln(tput / tput_base)
            + w_mem * ln(mem_base / mem)

Log-ratios make objectives with different units comparable and symmetric (2x faster
and 2x slower weigh the same). The baseline scores 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna

from kvopt.attrs import BASELINE_ATTR, CANDIDATE_ATTR, ENGINE_ATTR
from kvopt.config import ProfileConfig
from kvopt.engines import DEFAULT_ENGINE, candidate_type
from kvopt.metrics import METRICS, SIGN, slo_violations
from kvopt.space import Candidate, candidate_key

__all__ = [
    "Result",
    "Recommendation",
    "collect_results",
    "pareto_front",
    "gains_pct",
    "profile_score",
    "slo_violations",
    "recommend",
    "dominated_by",
    "can_win_check",
]


@dataclass(frozen=True)
class Result:
    """One measured candidate."""

    number: int
    params: dict[str, Any]
    label: str
    values: dict[str, float]
    is_baseline: bool = False
    user_attrs: dict[str, Any] = field(default_factory=dict, compare=False)
    # The engine whose knobs ``params`` are (studies stored before engines had names: transformers).
    engine: str = DEFAULT_ENGINE


@dataclass
class Recommendation:
    """The candidate kvopt proposes for the profile, with its gain over the baseline.

    ``model_kwargs()`` and ``generate_kwargs()`` apply it in your own code. After confirmation,
    ``gains_pct`` are the confirmed medians and ``gains_ci`` their confidence intervals.
    """

    result: Result
    score: float
    gains_pct: dict[str, float] | None  # None when the baseline could not be measured
    meets_slo: bool
    note: str | None = None
    # Set by confirmation: metric -> {pct, ci_low, ci_high, ci_coverage}; rounds measured.
    gains_ci: dict[str, dict[str, float | None]] | None = None
    confirmed_rounds: int = 0

    def candidate(self) -> Candidate:
        """The recommended settings as the engine's :class:`~kvopt.space.Candidate`."""
        kind: type[Candidate] = candidate_type(self.result.engine)
        return kind.from_params(self.result.params)

    def model_kwargs(self) -> dict[str, Any]:
        """``from_pretrained`` keyword arguments: dtype and attention backend."""
        return self._transformers().model_kwargs()

    def generate_kwargs(self, prompt_tokens: int | None = None, new_tokens: int | None = None) -> dict[str, Any]:
        """``generate`` keyword arguments: the cache (a new one per call) and its options.

        Give the workload's lengths for ``paged``: its page pool is sized from them.
        """
        return self._transformers().generate_kwargs(prompt_tokens, new_tokens)

    def _transformers(self) -> Any:
        """The candidate, for the Transformers engine's keyword arguments."""
        if self.result.engine != "transformers":
            raise ValueError(
                f"model_kwargs()/generate_kwargs() are Transformers settings; this study tuned the "
                f"{self.result.engine} engine: see recommended.yaml or Recommendation.candidate()"
            )
        return self.candidate()


def collect_results(study: optuna.Study) -> list[Result]:
    """Completed trials, one per candidate (a reused measurement is not counted twice)."""
    engine = str(study.user_attrs.get(ENGINE_ATTR, DEFAULT_ENGINE))
    results: list[Result] = []
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        key = candidate_key(trial.params)
        if key in seen:
            continue
        seen.add(key)
        results.append(
            Result(
                number=trial.number,
                params=dict(trial.params),
                label=str(trial.user_attrs.get(CANDIDATE_ATTR, key)),
                values=dict(zip(METRICS, trial.values)),
                is_baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
                user_attrs=dict(trial.user_attrs),
                engine=engine,
            )
        )
    return results


def _dominates(a: Result, b: Result) -> bool:
    at_least_as_good = all(SIGN[m] * a.values[m] >= SIGN[m] * b.values[m] for m in METRICS)
    better = any(SIGN[m] * a.values[m] > SIGN[m] * b.values[m] for m in METRICS)
    return at_least_as_good and better


def pareto_front(results: list[Result]) -> list[Result]:
    """The non-dominated results, fastest TTFT first."""
    front = [r for r in results if not any(_dominates(o, r) for o in results if o is not r)]
    return sorted(front, key=lambda r: r.values["ttft_ms"])


def gains_pct(result: Result, baseline: Result) -> dict[str, float]:
    """Per-objective gain over the baseline in percent, positive = better.

    TTFT and memory: how much lower (−50% time is +50% gain); throughput: how much higher.
    """
    out = {}
    for m in METRICS:
        base, value = baseline.values[m], result.values[m]
        if SIGN[m] > 0:
            out[m] = (value / base - 1.0) * 100.0
        else:
            out[m] = (1.0 - value / base) * 100.0
    return out


def profile_score(result: Result, reference: dict[str, float], weights: dict[str, float]) -> float:
    """The profile's weighted sum of log-ratios to ``reference`` (see the module docstring); higher is better.

    Args:
        result: the measured candidate.
        reference: metric -> value to compare with (the baseline's, normally).
        weights: the profile's objective weights.
    """
    return sum(weights[m] * SIGN[m] * math.log(result.values[m] / reference[m]) for m in METRICS if weights[m] > 0)


def dominated_by(
    front: list[Result],
    samples: dict[str, list[float]],
    peak_mem_mb: float,
    *,
    margin: float,
    min_runs: int = 3,
) -> Result | None:
    """A measured result that beats this candidate even at its best observed values.

    Conservative on purpose: the candidate is credited with its *best* run (lowest TTFT,
    highest throughput), not its median, and the dominating result must beat that by
    ``margin`` (relative) on both timings and need no more memory. Memory is exact after
    the first call (CPU) or the first timed run (CUDA), so it needs no margin. Returns None
    until ``min_runs`` timed runs.
    """
    if len(samples.get("ttft_ms", [])) < min_runs:
        return None
    best_ttft = min(samples["ttft_ms"])
    best_tput = max(samples["decode_tok_s"])
    for r in front:
        if (
            r.values["ttft_ms"] * (1.0 + margin) <= best_ttft
            and r.values["decode_tok_s"] >= best_tput * (1.0 + margin)
            and r.values["peak_mem_mb"] <= peak_mem_mb
        ):
            return r
    return None


def can_win_check(front: list[Result], margin: float):  # -> Callable[[samples, mem], str | None]
    """The per-run check a trial uses to stop measuring a candidate that cannot win."""

    def check(samples: dict[str, list[float]], peak_mem_mb: float) -> str | None:
        winner = dominated_by(front, samples, peak_mem_mb, margin=margin)
        if winner is None:
            return None
        return f"dominated by trial #{winner.number} ({winner.label}) even at its best run"

    return check


def _reference(results: list[Result], baseline: Result | None) -> dict[str, float]:
    if baseline is not None:
        return dict(baseline.values)
    # Without a baseline, score against the median candidate so the ranking still means something.
    return {m: statistics.median(r.values[m] for r in results) for m in METRICS}


def recommend(results: list[Result], profile: ProfileConfig) -> Recommendation | None:
    """The front member with the best profile score among those meeting the SLOs."""
    if not results:
        return None
    baseline = next((r for r in results if r.is_baseline), None)
    reference = _reference(results, baseline)
    front = pareto_front(results)
    feasible = [r for r in front if not slo_violations(r.values, profile.slo)]
    note = None
    pool = feasible
    if not feasible:
        # Nothing meets the SLOs: show the closest candidate, plainly flagged.
        pool = front
        note = "no measured candidate meets the profile's SLOs; showing the best-scoring one"
    best = max(pool, key=lambda r: profile_score(r, reference, profile.weights))
    if baseline is None:
        note = (note + "; " if note else "") + "the baseline was not measured: no gains to show"
    return Recommendation(
        result=best,
        score=profile_score(best, reference, profile.weights),
        gains_pct=gains_pct(best, baseline) if baseline is not None else None,
        meets_slo=bool(feasible),
        note=note,
    )
