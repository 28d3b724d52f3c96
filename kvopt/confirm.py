"""Confirmation: re-measure the finalists and the baseline side by side before deciding.

A study ranks candidates measured minutes apart on a shared, drifting machine. Here the
recommendation, the candidates that can still win it (profile-score bands overlapping,
``top_k`` at most) and the baseline are measured again in the same process, in
interleaved rounds whose order rotates (A B C, B C A, C A B, …), so drift and position
(warm caches, thermals) hit every candidate alike. Each round pairs a candidate with the
baseline of the same round; gains are medians of those paired ratios with their
distribution-free CIs. A finalist replaces the baseline only if its paired profile score
is above zero across that CI; otherwise the baseline is kept and a note says so.

A profile with several request shapes (:class:`kvopt.workload.WorkloadMix`) is confirmed on
every shape: each round runs every shape, and a finalist's score in a round is the
share-weighted sum of its paired per-shape scores (shares = each shape's fraction of the
requests). Memory on a shape other than the trials' is the finalist's peak on its first
call of that shape (which is also its first warm-up call). Each shape's own preference is
reported, and a note says when shapes prefer different finalists.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvopt.config import ConfirmConfig, MeasureConfig, ProfileConfig
from kvopt.engines.base import Engine, Loaded, Loader
from kvopt.measure.adaptive import median_ci
from kvopt.measure.memory import MB
from kvopt.protocol import SETTLE_BELOW_S, prepare_window, timed_run
from kvopt.select import Recommendation, Result, profile_score, slo_violations
from kvopt.space import Candidate, SearchSpace
from kvopt.surrogate import log_ci_half_width
from kvopt.workload import Workload

__all__ = [
    "Gain",
    "Confirmation",
    "choose_finalists",
    "score_interval",
    "paired_scores",
    "confirm",
    "confirmed_gains",
    "confirmed_recommendation",
    "separation",
    "decision_is_clear",
    "decide",
    "Decision",
    "MIN_ROUNDS",
    "FULL_LENGTH_TOLERANCE",
    "DERIVED_MEMORY_MAX_ERROR_PCT",
    "derived_peak_mb",
    "full_length_scale",
    "shape_scales",
    "gains_precise",
    "GAIN_PRECISION_PP",
]

# No finalist is called confirmed (nor the baseline kept as proven) from fewer paired rounds:
# with 5 rounds the median's distribution-free interval is [min, max] at 93.8% coverage.
MIN_ROUNDS = 5
# A finalist's peak on a shape other than the trials' is derived from the memory model when
# the model was within this many % of the trial's measured peak (else it is measured).
DERIVED_MEMORY_MAX_ERROR_PCT = 2.0
# Once the decision is clear, rounds go on (within the budget) until the chosen finalist's
# TTFT and decode gains have CIs no wider than ± this many percentage points.
GAIN_PRECISION_PP = 5.0
# A decode window's estimate may differ this much from a full-length call before the
# full-length figure counts (the window sits at the mean context; beyond this, it does not
# stand for the whole call).
FULL_LENGTH_TOLERANCE = 0.10


@dataclass(frozen=True)
class Gain:
    """Gain over the baseline in percent (positive = better) with its confidence interval."""

    pct: float
    low: float | None
    high: float | None
    coverage: float | None  # None: an exact figure (memory is measured, not sampled)

    def as_dict(self) -> dict[str, Any]:
        return {"pct": self.pct, "ci_low": self.low, "ci_high": self.high, "ci_coverage": self.coverage}


@dataclass
class Confirmation:
    rounds: int
    finalists: list[Result]
    samples: dict[int, dict[str, list[float]]]  # trial number -> metric -> per-round values
    gains: dict[int, dict[str, Gain]]
    recommended: Result
    study_recommended: Result
    seconds: float  # the rounds, from the first to the last
    notes: list[str] = field(default_factory=list)
    # Where the time went, so a study's overhead can be measured: wall time inside the
    # rounds' generate calls, and before the rounds (loading and warming the finalists).
    timed_s: float = 0.0
    setup_s: float = 0.0
    # Per request shape of the profile's mix (one entry per shape; see :func:`confirm`).
    shapes: list[dict[str, Any]] = field(default_factory=list)
    # Whether the decision is confirmed (at least MIN_ROUNDS rounds and clear; see decide()).
    confirmed: bool = False
    # The finalists the rounds could not tell from the chosen one (trial numbers).
    tie_set: list[int] = field(default_factory=list)
    stopped_because: str = ""
    # Per (finalist, shape) with a decode window: its estimate against a full-length call.
    window_checks: list[dict[str, Any]] = field(default_factory=list)
    equivalence: float = 0.0

    @property
    def reversed(self) -> bool:
        return self.recommended.number != self.study_recommended.number

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "seconds": self.seconds,
            "timed_s": self.timed_s,
            "setup_s": self.setup_s,
            "finalists": [r.number for r in self.finalists],
            "samples": {str(k): v for k, v in self.samples.items()},
            "gains": {str(k): {m: g.as_dict() for m, g in v.items()} for k, v in self.gains.items()},
            "recommended": self.recommended.number,
            "study_recommended": self.study_recommended.number,
            "reversed": self.reversed,
            "notes": self.notes,
            "shapes": self.shapes,
            "confirmed": self.confirmed,
            "tie_set": self.tie_set,
            "stopped_because": self.stopped_because,
            "window_checks": self.window_checks,
            "equivalence": self.equivalence,
        }


def confirmed_recommendation(rec: Recommendation, results: list[Result], stored: Mapping[str, Any]) -> Recommendation:
    """The recommendation after confirmation, from :meth:`Confirmation.to_dict`'s form.

    The run uses it on the fresh confirmation and ``kvopt report`` on the one stored in the
    study, so both show the same choice and gains. A stored confirmation of another study
    recommendation (the study went on after it) no longer applies: ``rec`` is returned as is.
    """
    chosen = next((r for r in results if r.number == stored["recommended"]), None)
    if chosen is None or stored["study_recommended"] != rec.result.number:
        return rec
    gains = stored["gains"][str(chosen.number)]
    notes = [n for n in (rec.note, *stored["notes"]) if n]
    # Stored before sequential confirmation: every stored confirmation counted as confirmed.
    confirmed = bool(stored.get("confirmed", True))
    return Recommendation(
        result=chosen,
        score=rec.score if chosen.number == rec.result.number else float("nan"),
        gains_pct={m: g["pct"] for m, g in gains.items()},
        meets_slo=rec.meets_slo,
        note="; ".join(notes) or None,
        gains_ci={m: dict(g) for m, g in gains.items()},
        confirmed_rounds=stored["rounds"] if confirmed else 0,
    )


def score_interval(result: Result, reference: dict[str, float], weights: dict[str, float]) -> tuple[float, float]:
    """The profile score of a measured result with its ~95% band from the medians' CIs.

    Each timing's median has a stored distribution-free 95% CI; on the log scale its
    half-width is ~1.96 standard deviations. The score's band adds the weighted
    deviations in quadrature (memory is exact). Without stored stats, the band is zero.
    """
    score = profile_score(result, reference, weights)
    var = 0.0
    for metric in ("ttft_ms", "decode_tok_s"):
        spread = log_ci_half_width(result.user_attrs.get(f"{metric}_stats"))
        if spread is not None:
            var += (weights[metric] * spread) ** 2
    half = math.sqrt(var)
    return score - half, score + half


def choose_finalists(results: list[Result], recommended: Result, profile: ProfileConfig, top_k: int) -> list[Result]:
    """The recommendation, up to ``top_k`` others that can still win the profile, the baseline.

    "Can still win": SLO-meeting, and the upper end of its profile-score band reaches the
    lower end of the recommendation's (the bands overlap), best first. A candidate whose
    band lies wholly below cannot become the recommendation, so re-measuring it would
    change nothing; the baseline is always measured, as the reference of every gain.
    """
    baseline = next(r for r in results if r.is_baseline)
    reference, weights = baseline.values, profile.weights
    floor = score_interval(recommended, reference, weights)[0]
    reach = [
        r
        for r in results
        if r.number not in (recommended.number, baseline.number)
        and not slo_violations(r.values, profile.slo)
        and score_interval(r, reference, weights)[1] >= floor
    ]
    reach.sort(key=lambda r: profile_score(r, reference, weights), reverse=True)
    chosen = [recommended, *reach[:top_k]]
    if baseline.number not in {r.number for r in chosen}:
        chosen.append(baseline)
    return chosen


def _gain_from_ratios(ratios: list[float], higher_is_better: bool) -> Gain:
    """Per-round ratios (candidate over baseline) to a gain in percent with a CI."""
    ci = median_ci(ratios)

    def pct(ratio: float) -> float:
        return (ratio - 1.0) * 100.0 if higher_is_better else (1.0 - ratio) * 100.0

    low, high = sorted((pct(ci.low), pct(ci.high)))
    return Gain(pct=pct(ci.median), low=low, high=high, coverage=ci.coverage)


def gains_precise(samples: dict[str, list[float]], baseline: dict[str, list[float]]) -> bool:
    """Whether a finalist's paired TTFT and decode gains have CIs within ±:data:`GAIN_PRECISION_PP` points."""
    gains = confirmed_gains(samples, baseline, 1.0)
    return all(
        g.low is not None and g.high is not None and (g.high - g.low) / 2.0 <= GAIN_PRECISION_PP
        for m, g in gains.items()
        if m != "peak_mem_mb"
    )


def confirmed_gains(
    samples: dict[str, list[float]], baseline: dict[str, list[float]], memory_ratio: float
) -> dict[str, Gain]:
    """Paired-round gains of one finalist over the baseline measured in the same rounds."""
    ttft = [c / b for c, b in zip(samples["ttft_ms"], baseline["ttft_ms"])]
    tput = [c / b for c, b in zip(samples["decode_tok_s"], baseline["decode_tok_s"])]
    return {
        "ttft_ms": _gain_from_ratios(ttft, higher_is_better=False),
        "decode_tok_s": _gain_from_ratios(tput, higher_is_better=True),
        "peak_mem_mb": Gain(pct=(1.0 - memory_ratio) * 100.0, low=None, high=None, coverage=None),
    }


class _ShapeCalls:
    """One finalist's calls on one shape: the same prompts (and filled prefix, if it reuses one) every time.

    A timed call follows the trial's protocol (:func:`kvopt.protocol.full_length_reason`): a
    prefill-only call and a decode window (split), or one whole call (full-length).
    """

    def __init__(
        self,
        engine: Engine,
        loaded: Loaded,
        cand: Candidate,
        shape: Workload,
        seed: int,
        clock: list[float],
        measure: MeasureConfig | None,
    ):
        self.cand, self.shape, self.clock = cand, shape, clock
        self.session = engine.session(loaded, cand, shape, seed)
        self.window = prepare_window(engine, self.session, cand, shape, measure)

    def _generate(self, new_tokens: int | None = None) -> Any:
        return self.session.call(new_tokens or self.shape.new_tokens)

    def _once(self) -> dict[str, float]:
        return timed_run(self._generate, self.window, self.cand.batch_size, self.shape.new_tokens)

    def timed(self) -> dict[str, float]:
        """One timed run of the trial's protocol; adds its wall time to ``clock[0]``."""
        begin = time.monotonic()
        metrics = self._once()
        self.clock[0] += time.monotonic() - begin
        return metrics

    def warm(self) -> None:
        """One untimed run (warm-up)."""
        self._once()

    def full_length_check(self) -> list[tuple[float, float]]:
        """(window, whole call) decode tok/s pairs: one whole, unprofiled call between two windows.

        The window figure is the mean of the windows just before and just after the whole
        call, so a machine whose speed drifts (seen here: x2 within minutes) moves both alike.
        A pair beyond :data:`FULL_LENGTH_TOLERANCE` is measured once more: one call's noise
        (5-10% on a busy 2-core CPU) must not decide a correction on its own.
        """
        assert self.window is not None  # only the split protocol has a window to check
        pairs: list[tuple[float, float]] = []
        for _ in range(2):
            before = self.window.metrics(self.window.timed())["decode_tok_s"]
            whole = float(self._generate().metrics(self.cand.batch_size)["decode_tok_s"])
            after = self.window.metrics(self.window.timed())["decode_tok_s"]
            pairs.append(((before + after) / 2.0, whole))
            if abs(pairs[-1][0] / pairs[-1][1] - 1.0) <= FULL_LENGTH_TOLERANCE:
                break
        return pairs

    def peak_mb(self) -> tuple[float, float]:
        """Peak memory of one call and the call's seconds (it is also a warm-up call)."""
        start = time.monotonic()
        _, reading = self.session.call_with_peak(self.shape.new_tokens)
        seconds = time.monotonic() - start
        return reading.peak_bytes / MB, seconds


@dataclass
class _Rounds:
    """The per-shape samples of the rounds so far: shape index -> trial number -> metric -> values."""

    per_shape: list[dict[int, dict[str, list[float]]]]
    count: int = 0


def _previous_rounds(
    previous: Mapping[str, Any] | None, finalists: list[Result], mix: Sequence[Workload]
) -> _Rounds | None:
    """A stored confirmation's rounds, if it measured the same finalists on the same shapes (a re-run adds to them)."""
    if not previous or sorted(previous.get("finalists", [])) != sorted(r.number for r in finalists):
        return None
    shapes = previous.get("shapes") or []
    if len(mix) > 1:
        if [(d["prompt_tokens"], d["new_tokens"]) for d in shapes] != [(w.prompt_tokens, w.new_tokens) for w in mix]:
            return None
        raw = [d["samples"] for d in shapes]
    else:
        raw = [previous.get("samples", {})]
    try:
        per_shape = [{r.number: {m: list(v) for m, v in s[str(r.number)].items()} for r in finalists} for s in raw]
    except KeyError:  # stored by an older kvopt, or of other finalists
        return None
    return _Rounds(per_shape, int(previous.get("rounds", 0)))


def derived_peak_mb(
    result: Result, candidate: Candidate, engine: Engine, trial_shape: Workload, shape: Workload
) -> float | None:
    """A finalist's peak memory on another shape from the memory model, where it proved itself; else None.

    The trial measured the peak on its shape and stored how far the analytic prediction was
    from it (``predicted_mem_error_pct``). Within ±:data:`DERIVED_MEMORY_MAX_ERROR_PCT` the
    prediction for ``shape`` is used, calibrated by the same ratio — what one full-length,
    profiled call would otherwise cost (gpt2's 512+512 on a 2-core CPU: ~45 s per finalist).
    Where the engine's model does not scale with the shape (the paged pool), it is always measured.
    """
    error = result.user_attrs.get("predicted_mem_error_pct")
    if error is None or abs(error) > DERIVED_MEMORY_MAX_ERROR_PCT or not engine.peak_scales_with_model(candidate):
        return None
    on_trial = engine.predict_memory(candidate, trial_shape).total_bytes
    there = engine.predict_memory(candidate, shape).total_bytes
    return float(result.values["peak_mem_mb"]) * there / on_trial


def full_length_scale(pairs: Sequence[tuple[float, float]]) -> float:
    """What a finalist's window decode samples are multiplied by: 1, or full / window.

    ``pairs``: (window, whole call) decode tok/s measured back to back. The whole call counts
    only when every pair is beyond :data:`FULL_LENGTH_TOLERANCE` on the same side (two, when
    the first was: :meth:`_ShapeCalls.full_length_check`); then by the pairs' mean ratio.
    """
    deviations = [window / full - 1.0 for window, full in pairs]
    same_side = all(d > FULL_LENGTH_TOLERANCE for d in deviations) or all(
        d < -FULL_LENGTH_TOLERANCE for d in deviations
    )
    if len(pairs) < 2 or not same_side:
        return 1.0
    return sum(full for _, full in pairs) / sum(window for window, _ in pairs)


def shape_scales(checks: Mapping[tuple[int, int], Sequence[tuple[float, float]]]) -> dict[tuple[int, int], float]:
    """Per (finalist, shape), what its window decode samples are multiplied by as the rounds record them.

    Where the full-length figure counts for any finalist on a shape (:func:`full_length_scale`),
    the window does not stand for whole calls there, so every finalist's decode on that shape
    is put on the whole-call scale by its own checks (mean full / mean window): scaling one
    finalist alone would move the comparison by that finalist's check noise only. Elsewhere 1.
    """
    flagged = {i for (_, i), pairs in checks.items() if full_length_scale(pairs) != 1.0}
    return {
        (number, i): sum(f for _, f in pairs) / sum(w for w, _ in pairs)
        for (number, i), pairs in checks.items()
        if i in flagged
    }


def _check_windows(
    checks: dict[tuple[int, int], list[tuple[float, float]]],
    mix: Sequence[Workload],
    labels: dict[int, str],
    notes: list[str],
) -> list[dict[str, Any]]:
    """Each (finalist, shape)'s window estimate against its full-length call(s), as reported and stored.

    Where the full-length figure counts (:func:`full_length_scale`), the rounds recorded the
    finalist's decode samples on that shape scaled by it, and a note says so.
    """
    report = []
    scaled = shape_scales(checks)
    for (number, i), pairs in sorted(checks.items()):
        window = sum(w for w, _ in pairs) / len(pairs)
        full = sum(f for _, f in pairs) / len(pairs)
        deviation = window / full - 1.0
        counts = full_length_scale(pairs) != 1.0
        report.append(
            {
                "trial": number,
                "shape": mix[i].label,
                "window_tok_s": window,
                "full_length_tok_s": full,
                "deviation_pct": deviation * 100.0,
                "pairs": [list(p) for p in pairs],
                "full_length_counts": counts,
                "scale": scaled.get((number, i), 1.0),
            }
        )
        if counts:
            notes.append(
                f"#{number} {labels[number]} at {mix[i].label}: the decode window's estimate "
                f"({window:.1f} tok/s) is {deviation:+.0%} from full-length calls measured beside it ({full:.1f} "
                f"tok/s) in {len(pairs)} of {len(pairs)} checks, beyond ±{FULL_LENGTH_TOLERANCE:.0%}: the "
                f"full-length figure counts; every finalist's decode at {mix[i].label} is put on the whole-call "
                "scale by its own checks"
            )
    return report


def confirm(
    finalists: list[Result],
    *,
    space: SearchSpace,
    engine: Engine,
    workload: Workload,
    profile: ProfileConfig,
    cfg: ConfirmConfig,
    seed: int,
    on_round: Callable[[int, float], None] | None = None,
    shapes: Sequence[Workload] = (),
    measure: MeasureConfig | None = None,
    deadline: float | None = None,
    previous: Mapping[str, Any] | None = None,
) -> Confirmation:
    """Measure the finalists in rotating interleaved rounds until the decision is clear, then decide.

    ``workload`` is the shape the trials measured; ``shapes`` the profile's whole mix (it
    includes ``workload``; empty: that shape alone). ``measure``: the trials' protocol
    settings (the decode window). Rounds go on until :func:`decision_is_clear` (at least
    :data:`MIN_ROUNDS`), ``cfg.rounds``, ``cfg.max_seconds`` of rounds, or ``deadline`` (a
    ``time.monotonic()`` value for the whole confirmation). ``previous``: a stored
    confirmation of the same finalists, whose rounds this one continues.
    """
    setup_start = time.monotonic()
    baseline = next(r for r in finalists if r.is_baseline)
    mix = list(shapes) or [workload]
    trial_shape = next(
        i for i, w in enumerate(mix) if (w.prompt_tokens, w.new_tokens) == (workload.prompt_tokens, workload.new_tokens)
    )
    labels = {r.number: r.label for r in finalists}
    candidates = {r.number: space.make_candidate(r.params) for r in finalists}
    # One loader per model the engine loads (Transformers: per dtype and attention): every
    # finalist's model stays loaded for the rounds.
    loaders: dict[tuple[Any, ...], Loader] = {}
    calls: dict[tuple[int, int], _ShapeCalls] = {}
    clock = [0.0]  # wall time inside the rounds' timed calls
    # Peak memory per shape and finalist: the trials' for their shape, a first call for the others.
    memory: list[dict[int, float]] = [{} for _ in mix]
    # (finalist, shape) -> (window, full-length) decode tok/s pairs, measured back to back
    checks: dict[tuple[int, int], list[tuple[float, float]]] = {}
    derived_on: dict[int, list[int]] = {}  # shape -> finalists whose peak there is derived, not measured
    for number, cand in candidates.items():
        key = engine.model_key(cand)
        if key not in loaders:
            loaders[key] = engine.loader()
        loaded = loaders[key].get(cand)[0]
        result = next(r for r in finalists if r.number == number)
        for i, shape in enumerate(mix):
            shape_calls = _ShapeCalls(engine, loaded, cand, shape, seed, clock, measure)
            calls[(number, i)] = shape_calls
            # The profile's warm-up; a memory-reading first call counts as the first (as in a trial).
            derived = None if i == trial_shape else derived_peak_mb(result, cand, engine, workload, shape)
            if i == trial_shape:
                memory[i][number] = result.values["peak_mem_mb"]
                warm = profile.warmup
            elif derived is not None:
                memory[i][number] = derived
                derived_on.setdefault(i, []).append(number)
                warm = profile.warmup
            else:
                memory[i][number], first_s = shape_calls.peak_mb()
                warm = max(profile.warmup - 1, int(first_s < SETTLE_BELOW_S))
            for _ in range(max(warm, int(shape_calls.window is not None))):
                shape_calls.warm()
            if shape_calls.window is not None:  # the window's estimate is checked against a whole call
                checks[(number, i)] = shape_calls.full_length_check()
    clock[0] = 0.0  # the warm-up calls are setup, not measurement
    setup_s = time.monotonic() - setup_start
    scales = shape_scales(checks)

    order = [r.number for r in finalists]
    rounds = _previous_rounds(previous, finalists, mix) or _Rounds(
        [{n: {"ttft_ms": [], "decode_tok_s": []} for n in order} for _ in mix]
    )
    continued = rounds.count
    notes: list[str] = []
    if continued:
        notes.append(f"continues the {continued} rounds stored by an earlier run of this study")
    start = time.monotonic()
    stopped = f"confirm.rounds ({cfg.rounds}) reached"
    while rounds.count - continued < cfg.rounds:
        now = time.monotonic()
        done_here = rounds.count - continued
        mean_round = (now - start) / done_here if done_here else 0.0
        # A round is started only if, at the rounds' mean length, it ends within the budget.
        if done_here and now - start + mean_round > cfg.max_seconds:
            stopped = f"confirm.max_seconds ({cfg.max_seconds:g} s) reached"
            break
        if deadline is not None and now + mean_round > deadline:
            stopped = "study.budget reached"
            break
        shift = rounds.count % len(order)
        for i in range(len(mix)):
            for number in order[shift:] + order[:shift]:
                for metric, value in calls[(number, i)].timed().items():
                    if metric == "decode_tok_s":
                        value *= scales.get((number, i), 1.0)
                    rounds.per_shape[i][number][metric].append(value)
        rounds.count += 1
        if on_round is not None:
            on_round(rounds.count, time.monotonic() - start)
        scores = _mix_scores(_shape_scores(finalists, baseline, rounds, memory, mix, profile), mix)
        if rounds.count >= MIN_ROUNDS and decision_is_clear(scores, baseline.number, cfg.equivalence):
            # Clear; the budget left goes to the chosen one's gains until they are known to ±GAIN_PRECISION_PP.
            chosen = decide(finalists, scores, baseline, profile, cfg.equivalence, rounds.count).chosen
            trial_samples = rounds.per_shape[trial_shape]
            if chosen.is_baseline or gains_precise(trial_samples[chosen.number], trial_samples[baseline.number]):
                stopped = f"the decision is clear and its gains are known to ±{GAIN_PRECISION_PP:g} points"
                break
            stopped = f"the decision is clear; its gains not yet known to ±{GAIN_PRECISION_PP:g} points"
    for shape_calls in calls.values():
        shape_calls.session.close()
    for loader in loaders.values():
        loader.release()
    notes.append(f"rounds stopped after {rounds.count}: {stopped}")
    for i, numbers in sorted(derived_on.items()):
        notes.append(
            f"peak memory at {mix[i].label} of " + ", ".join(f"#{n}" for n in numbers) + " derived from the memory "
            f"model calibrated on the trial's shape (its error there within ±{DERIVED_MEMORY_MAX_ERROR_PCT:g}%)"
        )

    window_checks = _check_windows(checks, mix, labels, notes) if rounds.count else []
    samples = rounds.per_shape[trial_shape]
    gains = {
        r.number: confirmed_gains(
            samples[r.number],
            samples[baseline.number],
            r.values["peak_mem_mb"] / baseline.values["peak_mem_mb"],
        )
        for r in finalists
    }
    by_shape = _shape_scores(finalists, baseline, rounds, memory, mix, profile)
    scores = _mix_scores(by_shape, mix)
    decision = decide(finalists, scores, baseline, profile, cfg.equivalence, rounds.count)
    notes.extend(decision.notes)
    recommended = decision.chosen
    if recommended.number != finalists[0].number:
        notes.append(
            f"confirmation reversed the study's ranking: #{finalists[0].number} {finalists[0].label} "
            f"-> #{recommended.number} {recommended.label}"
        )
    shape_docs = []
    if len(mix) > 1:
        shape_docs = [
            _shape_doc(
                mix[i],
                i == trial_shape,
                finalists,
                baseline,
                rounds.per_shape[i],
                memory[i],
                by_shape[i],
                profile.slo,
            )
            for i in range(len(mix))
        ]
        _note_disagreement(shape_docs, finalists, notes)
    return Confirmation(
        rounds=rounds.count,
        finalists=finalists,
        samples=samples,
        gains=gains,
        recommended=recommended,
        study_recommended=finalists[0],
        seconds=time.monotonic() - start,
        notes=notes,
        timed_s=clock[0],
        setup_s=setup_s,
        shapes=shape_docs,
        confirmed=decision.confirmed,
        tie_set=[r.number for r in decision.tie_set],
        stopped_because=stopped,
        window_checks=window_checks,
        equivalence=cfg.equivalence,
    )


def _shape_scores(
    finalists: list[Result],
    baseline: Result,
    rounds: _Rounds,
    memory: list[dict[int, float]],
    mix: Sequence[Workload],
    profile: ProfileConfig,
) -> list[dict[int, list[float]]]:
    """Per shape, each finalist's per-round paired profile score against the baseline."""
    return [
        {
            r.number: paired_scores(
                rounds.per_shape[i][r.number],
                rounds.per_shape[i][baseline.number],
                memory[i][r.number] / memory[i][baseline.number],
                profile.weights,
            )
            for r in finalists
        }
        for i in range(len(mix))
    ]


def _mix_scores(by_shape: list[dict[int, list[float]]], mix: Sequence[Workload]) -> dict[int, list[float]]:
    """A round's mix score per finalist: the share-weighted sum of its per-shape paired scores."""
    shares = [w.share for w in mix] if len(mix) > 1 else [1.0]
    return {
        number: [sum(share * shape[number][k] for share, shape in zip(shares, by_shape)) for k in range(len(scores))]
        for number, scores in by_shape[0].items()
    }


def _preferred(
    finalists: list[Result], baseline: Result, scores: dict[int, list[float]], slo: Mapping[str, float | None]
) -> int:
    """The finalist this shape alone would choose: the best median score whose CI excludes zero, else the baseline."""
    proven = [
        (median_ci(scores[r.number]).median, r.number)
        for r in finalists
        if r.number != baseline.number and not slo_violations(r.values, slo) and median_ci(scores[r.number]).low > 0
    ]
    return max(proven)[1] if proven else baseline.number


def _shape_doc(
    shape: Workload,
    is_trial_shape: bool,
    finalists: list[Result],
    baseline: Result,
    samples: dict[int, dict[str, list[float]]],
    memory: dict[int, float],
    scores: dict[int, list[float]],
    slo: Mapping[str, float | None],
) -> dict[str, Any]:
    """One shape's confirmed figures, as stored: gains and median paired score per finalist, its preference."""
    base = samples[baseline.number]
    return {
        "prompt_tokens": shape.prompt_tokens,
        "new_tokens": shape.new_tokens,
        "share": shape.share,
        "clamped_from": shape.clamped_from,
        "trial_shape": is_trial_shape,
        "peak_mem_mb": {str(n): mb for n, mb in memory.items()},
        "samples": {str(n): v for n, v in samples.items()},
        "medians": {str(r.number): {m: median_ci(v).median for m, v in samples[r.number].items()} for r in finalists},
        "gains": {
            str(r.number): {
                m: g.as_dict()
                for m, g in confirmed_gains(samples[r.number], base, memory[r.number] / memory[baseline.number]).items()
            }
            for r in finalists
        },
        "score": {str(r.number): median_ci(scores[r.number]).median for r in finalists},
        "preferred": _preferred(finalists, baseline, scores, slo),
    }


def _note_disagreement(shape_docs: list[dict[str, Any]], finalists: list[Result], notes: list[str]) -> None:
    labels = {r.number: f"#{r.number} {r.label}" for r in finalists}
    preferred = {doc["preferred"] for doc in shape_docs}
    if len(preferred) > 1:
        notes.append(
            "shapes prefer different settings: "
            + "; ".join(f"{d['prompt_tokens']}+{d['new_tokens']} -> {labels[d['preferred']]}" for d in shape_docs)
            + " (the recommendation follows the share-weighted mix score)"
        )


def paired_scores(
    samples: dict[str, list[float]],
    baseline: dict[str, list[float]],
    memory_ratio: float,
    weights: dict[str, float],
) -> list[float]:
    """Per-round profile score of a finalist against the baseline measured in the same round."""
    memory = -weights["peak_mem_mb"] * math.log(memory_ratio)
    return [
        -weights["ttft_ms"] * math.log(t / bt) + weights["decode_tok_s"] * math.log(d / bd) + memory
        for t, bt, d, bd in zip(
            samples["ttft_ms"], baseline["ttft_ms"], samples["decode_tok_s"], baseline["decode_tok_s"]
        )
    ]


def _changes(result: Result, baseline: Result) -> int:
    """How many settings differ from the baseline's (a simpler change is preferred on a tie)."""
    keys = set(result.params) | set(baseline.params)
    return sum(result.params.get(k) != baseline.params.get(k) for k in keys)


def separation(differences: Sequence[float], equivalence: float) -> str:
    """What paired per-round differences (a − b) show: ``better``, ``worse``, ``equivalent`` or ``unclear``.

    Their median's distribution-free CI lies inside ±``equivalence``: equivalent (a
    practical tie, even where it also excludes zero); else wholly above zero: better; wholly
    below: worse; otherwise the rounds cannot tell.
    """
    if not differences:
        return "unclear"
    ci = median_ci(differences)
    if -equivalence <= ci.low and ci.high <= equivalence:
        return "equivalent"
    if ci.low > 0:
        return "better"
    if ci.high < 0:
        return "worse"
    return "unclear"


def _gaps(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-round differences a − b of two finalists' paired scores (same rounds)."""
    return [x - y for x, y in zip(a, b)]


def _leader(scores: Mapping[int, Sequence[float]]) -> int:
    """The finalist with the highest median paired score (the baseline's is 0 in every round)."""
    return max(scores, key=lambda n: (median_ci(scores[n]).median if scores[n] else 0.0, -n))


def decision_is_clear(scores: Mapping[int, Sequence[float]], baseline: int, equivalence: float) -> bool:
    """Whether every finalist is told apart from the baseline and from the leader (or is within the margin).

    ``scores``: each finalist's per-round profile score against the baseline of the same
    round (the baseline's own are all 0).
    """
    leader = _leader(scores)
    for number, values in scores.items():
        if number == baseline:
            continue
        if separation(values, equivalence) == "unclear":
            return False
        if number != leader:
            if separation(_gaps(scores[leader], values), equivalence) == "unclear":
                return False
    return True


@dataclass
class Decision:
    """What the confirmed rounds support: the chosen finalist, the tie set it came from, whether it is confirmed."""

    chosen: Result
    tie_set: list[Result]
    confirmed: bool
    notes: list[str] = field(default_factory=list)


def decide(
    finalists: list[Result],
    scores: Mapping[int, Sequence[float]],
    baseline: Result,
    profile: ProfileConfig,
    equivalence: float,
    rounds: int,
) -> Decision:
    """The finalist the rounds support: the baseline unless a gain is shown, ties to the simplest change.

    - Fewer than :data:`MIN_ROUNDS` rounds: nothing is confirmed; the baseline is kept.
    - The tie set: the leader (highest median paired score; the baseline scores 0) and every
      SLO-meeting finalist the rounds cannot show worse than it by more than ``equivalence``
      (their paired differences are ``equivalent`` or ``unclear``). It goes to the fewest
      settings changed from the baseline (then the smaller batch, then the label), so the
      baseline wins any tie it is in and two runs whose noise orders the tied differently agree.
    - Confirmed: the chosen one is the baseline or is ``better`` than it; and every member of
      the tie set is told apart from the baseline (no member ``unclear`` against it).
    """
    labels = {r.number: f"#{r.number} {r.label}" for r in finalists}
    notes: list[str] = []
    eligible = [r for r in finalists if r.is_baseline or not slo_violations(r.values, profile.slo)]
    if not slo_violations(baseline.values, profile.slo) or len(eligible) == 1:
        pool = eligible
    else:  # the baseline breaks an SLO: it cannot be kept, the best of the others is
        pool = [r for r in eligible if not r.is_baseline]
        notes.append("the baseline breaks an SLO: it cannot be kept; the best confirmed finalist is chosen")
    if rounds < MIN_ROUNDS:
        others = ", ".join(labels[r.number] for r in finalists if not r.is_baseline) or "none"
        notes.append(
            f"not confirmed: within the budget the rounds ({rounds} of the {MIN_ROUNDS} a decision needs) could not "
            f"separate {others} from the baseline #{baseline.number} {baseline.label}: keeping the baseline"
        )
        kept = baseline if baseline in pool else max(pool, key=lambda r: median_ci(scores[r.number] or [0.0]).median)
        return Decision(chosen=kept, tie_set=[kept], confirmed=False, notes=notes)
    pooled = {r.number: list(scores[r.number]) for r in pool}
    leader = _leader(pooled)
    tie_set = [
        r
        for r in pool
        if r.number == leader
        or separation(_gaps(pooled[leader], pooled[r.number]), equivalence) in ("equivalent", "unclear")
    ]
    chosen = min(tie_set, key=lambda r: (_changes(r, baseline), r.params.get("batch_size", 0), r.label))
    unclear = [r for r in tie_set if not r.is_baseline and separation(pooled[r.number], equivalence) == "unclear"]
    confirmed = (chosen.is_baseline or separation(pooled[chosen.number], equivalence) == "better") and not unclear
    if len(tie_set) > 1:
        notes.append(
            f"tie set (within confirm.equivalence={equivalence:g} of the leader, or not separable from it in "
            f"{rounds} rounds): "
            + ", ".join(labels[r.number] for r in tie_set)
            + f"; keeping the simplest change from the baseline, {labels[chosen.number]}"
        )
    if not confirmed:
        notes.append(
            f"not confirmed: within the budget the rounds ({rounds}) could not separate "
            + ", ".join(labels[r.number] for r in (unclear or [chosen]))
            + f" from the baseline #{baseline.number} {baseline.label}"
            + ("" if chosen.is_baseline else "; keeping the baseline")
        )
        if not chosen.is_baseline and baseline in pool:
            chosen = baseline
    elif chosen.is_baseline and len(pool) > 1:
        within = ", ".join(
            f"{labels[r.number]} {median_ci(pooled[r.number]).median:+.3f} "
            f"[{median_ci(pooled[r.number]).low:+.3f}, {median_ci(pooled[r.number]).high:+.3f}]"
            for r in pool
            if not r.is_baseline
        )
        notes.append(
            "no finalist's profile-score gain over the baseline is shown beyond the equivalence margin "
            f"(median paired score [CI]: {within}): keeping the baseline"
        )
    return Decision(chosen=chosen, tie_set=tie_set, confirmed=confirmed, notes=notes)
