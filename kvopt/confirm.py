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

import torch

from kvopt.config import ConfirmConfig, ModelConfig, ProfileConfig
from kvopt.engine.generation import timed_generate
from kvopt.engine.loading import ModelLoader, WeightsSource
from kvopt.engine.prefix import prepare_prefix
from kvopt.engine.workload import Workload, make_inputs
from kvopt.measure.adaptive import median_ci
from kvopt.measure.memory import MB, measure_peak, weights_bytes
from kvopt.protocol import SETTLE_BELOW_S, resident_bytes, with_unseen_memory
from kvopt.select import Recommendation, Result, profile_score, slo_violations
from kvopt.space import SearchSpace
from kvopt.surrogate import log_ci_half_width

__all__ = [
    "Gain",
    "Confirmation",
    "choose_finalists",
    "round_seconds",
    "within_budget",
    "score_interval",
    "paired_scores",
    "confirm",
    "confirmed_gains",
    "confirmed_recommendation",
]


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
    return Recommendation(
        result=chosen,
        score=rec.score if chosen.number == rec.result.number else float("nan"),
        gains_pct={m: g["pct"] for m, g in gains.items()},
        meets_slo=rec.meets_slo,
        note="; ".join(notes) or None,
        gains_ci={m: dict(g) for m, g in gains.items()},
        confirmed_rounds=stored["rounds"],
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


def round_seconds(result: Result, trial_shape: Workload, shapes: Sequence[Workload]) -> float:
    """Estimated seconds of one confirmation round of a finalist: one call per shape, from its trial medians.

    Prefill is taken as proportional to the prompt, decode to the new tokens (the trials'
    per-token rate); a rough figure, enough to say what a budget affords.
    """
    ttft_s = result.values["ttft_ms"] / 1000.0
    per_token_s = float(result.params.get("batch_size", 1)) / max(result.values["decode_tok_s"], 1e-9)
    return sum(
        ttft_s * w.prompt_tokens / trial_shape.prompt_tokens + (w.new_tokens - 1) * per_token_s
        for w in (shapes or [trial_shape])
    )


def within_budget(
    finalists: list[Result], cost: Callable[[Result], float], per_round_s: float
) -> tuple[list[Result], list[str]]:
    """The finalists whose one round together fits ``per_round_s``, and a note per one left out.

    The recommendation and the baseline are always kept (without them nothing is
    confirmed); the others are added in rank order while a round of all kept ones fits,
    so the confirmation's budget (``confirm.max_seconds`` over ``confirm.rounds``) goes to
    rounds enough to tell the best apart rather than to one round of many.
    """
    kept = {r.number for r in finalists if r is finalists[0] or r.is_baseline}
    total = sum(cost(r) for r in finalists if r.number in kept)
    notes: list[str] = []
    for r in finalists:
        if r.number in kept:
            continue
        if not notes and total + cost(r) <= per_round_s:
            kept.add(r.number)
            total += cost(r)
        else:
            notes.append(
                f"#{r.number} {r.label} not confirmed: a round with it (~{total + cost(r):.0f} s, estimated from "
                f"the trials) exceeds confirm.max_seconds / confirm.rounds ({per_round_s:.0f} s)"
            )
    return [r for r in finalists if r.number in kept], notes


def _gain_from_ratios(ratios: list[float], higher_is_better: bool) -> Gain:
    """Per-round ratios (candidate over baseline) to a gain in percent with a CI."""
    ci = median_ci(ratios)

    def pct(ratio: float) -> float:
        return (ratio - 1.0) * 100.0 if higher_is_better else (1.0 - ratio) * 100.0

    low, high = sorted((pct(ci.low), pct(ci.high)))
    return Gain(pct=pct(ci.median), low=low, high=high, coverage=ci.coverage)


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
    """One finalist's calls on one shape: the same prompts (and filled prefix, if it reuses one) every time."""

    def __init__(self, model: Any, cand: Any, shape: Workload, device: torch.device, seed: int, clock: list[float]):
        self.model, self.cand, self.shape, self.device, self.clock = model, cand, shape, device, clock
        self.inputs = make_inputs(shape, cand.batch_size, model.config.vocab_size, seed, device)
        self.prefix = prepare_prefix(model, cand, shape, self.inputs, device)

    def _generate(self) -> Any:
        return timed_generate(
            self.model, self.inputs, self.cand, self.shape.new_tokens, self.device, prefix=self.prefix
        )

    def timed(self) -> dict[str, float]:
        """One timed call; adds its wall time to ``clock[0]``."""
        begin = time.monotonic()
        run = self._generate()
        self.clock[0] += time.monotonic() - begin
        return run.metrics(self.cand.batch_size)

    def peak_mb(self) -> tuple[float, float]:
        """Peak memory of one call and the call's seconds (it is also a warm-up call)."""
        resident = resident_bytes(weights_bytes(self.model), self.inputs, self.prefix)
        start = time.monotonic()
        result, reading = measure_peak(self._generate, self.device, resident)
        seconds = time.monotonic() - start
        reading = with_unseen_memory(reading, result, self.model, self.cand, self.shape, self.device)
        return reading.peak_bytes / MB, seconds


def confirm(
    finalists: list[Result],
    *,
    space: SearchSpace,
    model_cfg: ModelConfig,
    weights: WeightsSource,
    workload: Workload,
    device: torch.device,
    profile: ProfileConfig,
    cfg: ConfirmConfig,
    seed: int,
    on_round: Callable[[int, float], None] | None = None,
    shapes: Sequence[Workload] = (),
) -> Confirmation:
    """Measure the finalists in rotating interleaved rounds and decide on confirmed numbers.

    ``workload`` is the shape the trials measured; ``shapes`` the profile's whole mix (it
    includes ``workload``; empty: that shape alone).
    """
    setup_start = time.monotonic()
    baseline = next(r for r in finalists if r.is_baseline)
    mix = list(shapes) or [workload]
    trial_shape = next(
        i for i, w in enumerate(mix) if (w.prompt_tokens, w.new_tokens) == (workload.prompt_tokens, workload.new_tokens)
    )
    candidates = {r.number: space.make_candidate(r.params) for r in finalists}
    # One loader per (dtype, attention): every finalist's model stays loaded for the rounds.
    loaders: dict[tuple[str, str], ModelLoader] = {}
    runners: dict[tuple[int, int], Callable[[], dict[str, float]]] = {}
    clock = [0.0]  # wall time inside the rounds' generate calls
    # Peak memory per shape and finalist: the trials' for their shape, a first call for the others.
    memory: list[dict[int, float]] = [{} for _ in mix]
    # Untimed calls still owed before the first round, per (finalist, shape): the profile's
    # warm-up, where a memory-reading first call counts as the first of them (as in a trial).
    warm_calls: dict[tuple[int, int], int] = {}
    for number, cand in candidates.items():
        key = (cand.dtype, cand.attn_implementation)
        if key not in loaders:
            loaders[key] = ModelLoader(model_cfg, weights, device, seed)
        model = loaders[key].get(*key)[0].model
        result = next(r for r in finalists if r.number == number)
        for i, shape in enumerate(mix):
            calls = _ShapeCalls(model, cand, shape, device, seed, clock)
            runners[(number, i)] = calls.timed
            if i == trial_shape:
                memory[i][number] = result.values["peak_mem_mb"]
                warm_calls[(number, i)] = profile.warmup
            else:
                memory[i][number], first_s = calls.peak_mb()
                warm_calls[(number, i)] = max(profile.warmup - 1, int(first_s < SETTLE_BELOW_S))
    for pair, warm in runners.items():  # every finalist warm on every shape before the first timed round
        for _ in range(warm_calls[pair]):
            warm()
    clock[0] = 0.0  # the warm-up calls are setup, not measurement
    setup_s = time.monotonic() - setup_start

    order = [r.number for r in finalists]
    per_shape: list[dict[int, dict[str, list[float]]]] = [
        {n: {"ttft_ms": [], "decode_tok_s": []} for n in order} for _ in mix
    ]
    start = time.monotonic()
    rounds = 0
    notes: list[str] = []
    while rounds < cfg.rounds:
        shift = rounds % len(order)
        for i in range(len(mix)):
            for number in order[shift:] + order[:shift]:
                for metric, value in runners[(number, i)]().items():
                    per_shape[i][number][metric].append(value)
        rounds += 1
        if on_round is not None:
            on_round(rounds, time.monotonic() - start)
        elapsed = time.monotonic() - start
        # A round is started only if, at the rounds' mean length, it ends within the budget.
        if rounds < cfg.rounds and elapsed + elapsed / rounds > cfg.max_seconds:
            notes.append(
                f"stopped after {rounds} of {cfg.rounds} rounds: one more (~{elapsed / rounds:.0f} s) "
                f"would pass confirm.max_seconds ({cfg.max_seconds:g} s)"
            )
            break
    for loader in loaders.values():
        loader.release()

    samples = per_shape[trial_shape]
    gains = {
        r.number: confirmed_gains(
            samples[r.number],
            samples[baseline.number],
            r.values["peak_mem_mb"] / baseline.values["peak_mem_mb"],
        )
        for r in finalists
    }
    shares = [w.share for w in mix] if len(mix) > 1 else [1.0]
    by_shape = [
        {
            r.number: paired_scores(
                per_shape[i][r.number],
                per_shape[i][baseline.number],
                memory[i][r.number] / memory[i][baseline.number],
                profile.weights,
            )
            for r in finalists
        }
        for i in range(len(mix))
    ]
    # A round's mix score: the share-weighted sum of its per-shape paired scores.
    scores = {
        r.number: [sum(shares[i] * by_shape[i][r.number][k] for i in range(len(mix))) for k in range(rounds)]
        for r in finalists
    }
    recommended = _decide(finalists, scores, baseline, profile, notes)
    if recommended.number != finalists[0].number:
        notes.append(
            f"confirmation reversed the study's ranking: #{finalists[0].number} {finalists[0].label} "
            f"-> #{recommended.number} {recommended.label}"
        )
    shape_docs = []
    if len(mix) > 1:
        shape_docs = [
            _shape_doc(mix[i], i == trial_shape, finalists, baseline, per_shape[i], memory[i], by_shape[i], profile.slo)
            for i in range(len(mix))
        ]
        _note_disagreement(shape_docs, finalists, notes)
    return Confirmation(
        rounds=rounds,
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
    )


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


def _settle_ties(
    proven: list[Result],
    scores: dict[int, list[float]],
    baseline: Result,
    notes: list[str],
) -> Result:
    """Among finalists with a proven gain, the one the rounds can tell is best — else the simplest.

    Finalists whose per-round score difference to the best median's (paired, same rounds)
    has a CI that includes zero are tied with it; of tied ones the fewest settings changed
    from the baseline wins (then the smaller batch, then the label), so a second run of
    the same command, whose noise orders the tied ones differently, keeps the same one.
    """
    leader = max(proven, key=lambda r: median_ci(scores[r.number]).median)
    tied = [
        r
        for r in proven
        if r.number == leader.number
        or median_ci([a - b for a, b in zip(scores[leader.number], scores[r.number])]).low <= 0
    ]
    chosen = min(tied, key=lambda r: (_changes(r, baseline), r.params.get("batch_size", 0), r.label))
    if len(tied) > 1:
        notes.append(
            "finalists within each other's noise (paired score differences' CI includes zero): "
            + ", ".join(f"#{r.number} {r.label}" for r in tied)
            + f"; keeping the simplest change from the baseline, #{chosen.number} {chosen.label}"
        )
    return chosen


def _decide(
    finalists: list[Result],
    scores: dict[int, list[float]],
    baseline: Result,
    profile: ProfileConfig,
    notes: list[str],
) -> Result:
    """The finalist the confirmed rounds support; the baseline unless a gain is shown.

    ``scores`` holds each finalist's per-round profile score against the baseline of the
    same round (the mix score: share-weighted over the shapes). A finalist can replace the
    baseline only if the distribution-free CI of its median score lies wholly above zero (a
    gain the noise cannot explain); of those, the highest median wins unless the rounds
    cannot tell it from another (then the simplest change wins, :func:`_settle_ties`). With
    none, the baseline is kept and a note says which finalists were within the noise — so
    two runs of one command agree, or both say why.
    """
    feasible_baseline = not slo_violations(baseline.values, profile.slo)
    scored: list[tuple[float, float, Result]] = []
    for r in finalists:
        if r.number == baseline.number or slo_violations(r.values, profile.slo):
            continue
        ci = median_ci(scores[r.number])
        scored.append((ci.median, ci.low, r))
    proven = [(median, r) for median, low, r in scored if low > 0]
    if proven:
        return _settle_ties([r for _, r in proven], scores, baseline, notes)
    if not feasible_baseline and scored:
        notes.append("the baseline breaks an SLO: the best confirmed finalist is kept although its gain is not proven")
        return max(scored, key=lambda item: item[0])[2]
    if scored:
        within = ", ".join(f"#{r.number} {median:+.3f} [{low:+.3f}, …]" for median, low, r in scored)
        notes.append(
            "no finalist's profile-score gain over the baseline excludes zero in the paired rounds "
            f"(median paired score [CI low]: {within}): keeping the baseline"
        )
    return baseline
