"""The measurement protocol of one trial: setup, memory, warm-up, repetitions, statistics.

A timed run gives one TTFT and one decode throughput, by one of two protocols
(:func:`full_length_reason` says which, and why):

- **split** (prefill and decode apart): one prefill-only ``generate`` (one new token) gives
  the TTFT; one decode window (:mod:`kvopt.engines.transformers.window`: ``measure.decode_window`` steps
  from a cache filled to the full call's mean context) gives the decode tok/s;
- **full-length**: one greedy ``generate`` of exactly ``new_tokens`` tokens gives both: TTFT
  from the call to the first logits, decode throughput ``batch × (new_tokens − 1)`` over the
  time after the first token.

Order of one trial:
1. first call, full-length, timed as setup cost (kernel selection, lazy init, compile) — never
   mixed into TTFT or throughput. It is the first of the profile's ``warmup`` untimed runs;
2. (split) the window's cache is filled, untimed;
3. the remaining ``warmup − 1`` untimed runs (at least one after a short profiled first call,
   and at least one of the split protocol's calls);
4. timed runs: a fixed count, or adaptive (until each median's 95% CI is within
   ``rel_precision``, or a cap — then the trial is flagged noisy).

The peak memory is read in a call that is run anyway, never in an extra one, and always in
a full-length call (the longest context any call reaches): on CPU the profiler that reads the
peak slows the call it watches, so the first call (untimed) carries it, and
``first_call_s`` there includes the profiler's cost; the split protocol reads it there on
CUDA too (its timed runs never reach the longest context); a full-length trial on CUDA
reads the allocator's counters, which cost nothing, in its first timed run. On CPU the first
call's peak equals later calls' (checked for every cache on tiny-llama and tiny-gpt2:
Transformers builds a fresh cache per ``generate``). The profiler does slow the call right
after it, by about a millisecond (tiny-llama: TTFT +28% on the next call, none after a plain
first call; gpt2 at 32 tokens: none visible), so a first call shorter than
``SETTLE_BELOW_S`` is followed by one more untimed call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvopt.config import MeasureConfig
from kvopt.engines.base import DecodeWindowRun, Engine, Loaded, Session
from kvopt.failures import CallTooSlow
from kvopt.measure.adaptive import StopRule, median_ci, repeat_fixed, repeat_until_precise
from kvopt.measure.memory import MB, MemoryReading
from kvopt.measure.stats import summarize
from kvopt.space import Candidate
from kvopt.workload import Workload, placement

__all__ = [
    "Measurement",
    "measure_candidate",
    "full_length_reason",
    "prepare_window",
    "timed_run",
    "protocol_attrs",
    "stop_rule",
    "describe_stats",
    "slow_call_limit",
    "SETTLE_BELOW_S",
    "SLOW_CALL_FACTOR",
]

# After a CPU-profiled first call shorter than this, one untimed call lets the profiler's
# after-effect (~1 ms) pass; for longer calls it is under 0.1% of a run and is skipped.
SETTLE_BELOW_S = 1.0


@dataclass
class Measurement:
    candidate: Candidate
    ttft_ms: list[float]
    decode_tok_s: list[float]
    memory: MemoryReading
    weights_bytes: int
    kv_cache_bytes: int
    first_call_s: float
    stopped_because: str = "fixed"
    noisy: bool = False
    pruned_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> tuple[float, float, float]:
        """The study's objectives: median TTFT, median decode tok/s, peak memory MB."""
        return (
            summarize(self.ttft_ms)["median"],
            summarize(self.decode_tok_s)["median"],
            self.memory.peak_bytes / MB,
        )

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready user attrs: raw repetitions, statistics and memory breakdown."""
        return {
            "ttft_ms_raw": [round(v, 4) for v in self.ttft_ms],
            "decode_tok_s_raw": [round(v, 4) for v in self.decode_tok_s],
            "ttft_ms_stats": describe_stats(self.ttft_ms),
            "decode_tok_s_stats": describe_stats(self.decode_tok_s),
            "repetitions": len(self.ttft_ms),
            "stopped_because": self.stopped_because,
            "noisy": self.noisy,
            # Also for a trial stopped early, which has no objective values: memory is exact.
            "peak_mem_mb": self.values[2],
            "peak_mem_method": self.memory.method,
            "peak_mem_details": self.memory.details,
            "weights_mb": self.weights_bytes / MB,
            "kv_cache_mb": self.kv_cache_bytes / MB,
            "kv_cache_bytes": self.kv_cache_bytes,
            "first_call_s": self.first_call_s,
            **self.extra,
        }


def describe_stats(values: list[float]) -> dict[str, float]:
    """n, median, p90, mean, cv, and the median's distribution-free 95% CI."""
    ci = median_ci(values)
    return {**summarize(values), "ci_low": ci.low, "ci_high": ci.high, "ci_coverage": ci.coverage}


def stop_rule(measure: MeasureConfig, min_repetitions: int) -> StopRule:
    return StopRule(
        rel_precision=measure.rel_precision,
        min_repetitions=min_repetitions,
        max_repetitions=max(measure.max_repetitions, min_repetitions),
        max_seconds=measure.max_seconds,
    )


# A candidate whose one generate call takes this many times the trial budget
# (measure.max_seconds) is not measured further: each timed run would overrun it.
SLOW_CALL_FACTOR = 3.0


def slow_call_limit(measure: MeasureConfig | None) -> float | None:
    """Seconds one call may take before the candidate is refused as too slow (None: no limit)."""
    if measure is None or not measure.adaptive:
        return None
    return SLOW_CALL_FACTOR * measure.max_seconds


def _refuse_if_too_slow(call_s: float, measure: MeasureConfig | None, cut_after: tuple[int, int] | None = None) -> None:
    """Raise :class:`CallTooSlow` for a first call past :func:`slow_call_limit`.

    ``cut_after``: (tokens made, tokens asked) when the deadline ended the call early.
    """
    limit = slow_call_limit(measure)
    if limit is None:
        return
    if cut_after is not None:
        made, asked = cut_after
        raise CallTooSlow(
            f"too slow: its first generate call passed {limit:g} s ({SLOW_CALL_FACTOR:g} x "
            f"measure.max_seconds) after {made} of {asked} new tokens; stopped there, not measured further"
        )
    if call_s > limit:
        raise CallTooSlow(
            f"too slow: its first generate call took {call_s:.1f} s > {SLOW_CALL_FACTOR:g} x "
            f"measure.max_seconds ({limit:g} s); not measured further"
        )


def full_length_reason(
    engine: Engine, candidate: Candidate, workload: Workload, measure: MeasureConfig | None
) -> str | None:
    """Why this candidate's decode is timed on whole calls (the full-length protocol); None: split protocol.

    The split protocol (prefill-only calls for TTFT, a decode window for throughput) needs a
    decode that is the same fixed per-step loop wherever it is observed (the engine says
    where it is not: :meth:`~kvopt.engines.base.Engine.whole_calls_reason`), and is only worth
    it where a full call decodes at least twice the window's steps (shorter calls are cheaper
    timed whole: each also gives a TTFT).
    """
    window = measure.decode_window if measure is not None else 0
    if window == 0:
        return "measure.decode_window=0"
    if workload.new_tokens - 1 < 2 * window:
        return (
            f"{workload.new_tokens} new tokens: a whole call costs about what a TTFT call and a {window}-step window do"
        )
    return engine.whole_calls_reason(candidate)


def measure_candidate(
    engine: Engine,
    loaded: Loaded,
    candidate: Candidate,
    workload: Workload,
    *,
    warmup: int,
    repetitions: int,
    seed: int,
    measure: MeasureConfig | None = None,
    can_win: Callable[[dict[str, list[float]], float], str | None] | None = None,
    bounded: bool = True,
) -> Measurement:
    """Measure one candidate; ``measure=None`` or not adaptive: exactly ``repetitions`` runs.

    Where :func:`full_length_reason` is None, a timed run is one prefill-only call (TTFT) and
    one decode window (decode tok/s); otherwise one whole call. The engine's session makes
    the calls (:class:`kvopt.engines.base.Session`). ``can_win(samples, peak_mem_mb)`` is
    asked after every timed run; a reason it returns ends the repetitions (the measurement
    then carries ``pruned_reason``). ``bounded``: refuse a candidate whose first call took
    over ``SLOW_CALL_FACTOR`` x ``measure.max_seconds`` (:class:`~kvopt.failures.CallTooSlow`);
    the baseline is measured unbounded.
    """
    session = engine.session(loaded, candidate, workload, seed)
    try:
        return _measure(engine, session, candidate, workload, warmup, repetitions, measure, can_win, bounded)
    finally:
        session.close()


def _measure(
    engine: Engine,
    session: Session,
    candidate: Candidate,
    workload: Workload,
    warmup: int,
    repetitions: int,
    measure: MeasureConfig | None,
    can_win: Callable[[dict[str, list[float]], float], str | None] | None,
    bounded: bool,
) -> Measurement:
    """The protocol on one open session (:func:`measure_candidate`)."""
    full_reason = full_length_reason(engine, candidate, workload, measure)
    # A bounded first call is cut at the slow-call limit: past it the candidate is refused
    # anyway, and running it to the end would only spend the wall time.
    deadline = slow_call_limit(measure) if bounded else None

    # Where the peak is read: see the module docstring. The split protocol's timed calls never
    # reach the longest context, so its first (full-length, untimed) call reads it everywhere.
    probe_in_timed_run = session.free_peak and full_reason is not None
    memory: MemoryReading | None = None
    kv_bytes = 0
    start = time.perf_counter()
    if probe_in_timed_run:
        first = session.call(workload.new_tokens, deadline)
    else:
        first, memory = session.call_with_peak(workload.new_tokens, deadline)
        kv_bytes = first.kv_bytes
    first_call_s = time.perf_counter() - start
    cut_after = (first.new_tokens, workload.new_tokens) if first.cut_by_deadline else None
    del first  # free the cache before the timed runs
    if bounded:  # the baseline is always measured: without it there is no gain to report
        _refuse_if_too_slow(first_call_s, measure, cut_after)

    window = prepare_window(engine, session, candidate, workload, measure)
    # Wall time inside the timed calls, so a study's overhead can be measured.
    timed_runs_s = 0.0

    def timed_once() -> dict[str, float]:
        return timed_run(session.call, window, candidate.batch_size, workload.new_tokens)

    start = time.perf_counter()
    settle = not probe_in_timed_run and first_call_s < SETTLE_BELOW_S
    for _ in range(max(warmup - 1, int(settle or window is not None))):  # the window's own first call too
        timed_once()
    warmup_s = time.perf_counter() - start

    def once() -> dict[str, float]:
        nonlocal timed_runs_s, memory, kv_bytes
        begin = time.perf_counter()
        if memory is None:  # the first timed run carries the probe (its timing is the call's own)
            result, memory = session.call_with_peak(workload.new_tokens)
            kv_bytes = result.kv_bytes
            metrics = result.metrics(candidate.batch_size)
        else:
            metrics = timed_once()
        timed_runs_s += time.perf_counter() - begin
        return metrics

    check = None
    if can_win is not None:

        def check(samples: dict[str, list[float]]) -> str | None:
            assert memory is not None  # read by the first call or the first timed run
            return can_win(samples, memory.peak_bytes / MB)

    if measure is not None and measure.adaptive:
        adaptive = repeat_until_precise(once, stop_rule(measure, repetitions), check=check)
    else:
        adaptive = repeat_fixed(once, repetitions, check=check)
    assert memory is not None  # at least one timed run has been made
    return Measurement(
        candidate=candidate,
        ttft_ms=adaptive.samples["ttft_ms"],
        decode_tok_s=adaptive.samples["decode_tok_s"],
        memory=memory,
        weights_bytes=session.weights_bytes,
        kv_cache_bytes=kv_bytes,
        first_call_s=first_call_s,
        stopped_because=adaptive.stopped_because,
        noisy=adaptive.noisy,
        pruned_reason=adaptive.pruned_reason,
        extra={
            # No separate memory run any more: kept at 0 so older tables and newer ones add up alike.
            "memory_run_s": 0.0,
            "memory_probe": "first timed run" if probe_in_timed_run else "first call",
            "warmup_s": warmup_s,
            "timed_runs_s": timed_runs_s,
            **protocol_attrs(full_reason, window),
            **session.attrs(),
        },
    )


def prepare_window(
    engine: Engine, session: Session, candidate: Candidate, workload: Workload, measure: MeasureConfig | None
) -> DecodeWindowRun | None:
    """The candidate's decode window on ``workload``, filled (untimed); None where whole calls are timed."""
    if full_length_reason(engine, candidate, workload, measure) is not None:
        return None
    assert measure is not None  # full_length_reason is None only with a decode window
    return session.window(placement(workload.prompt_tokens, workload.new_tokens, measure.decode_window))


def timed_run(
    call: Callable[[int], Any], window: DecodeWindowRun | None, batch_size: int, new_tokens: int
) -> dict[str, float]:
    """One timed run: a whole call of ``new_tokens``, or (split) a prefill-only call and one decode window.

    ``call(n)``: one timed call of ``n`` new tokens (:meth:`kvopt.engines.base.Session.call`).
    """
    if window is None:
        return dict(call(new_tokens).metrics(batch_size))
    ttft = call(1).metrics(batch_size)["ttft_ms"]
    return {"ttft_ms": ttft, **window.metrics(window.timed())}


def protocol_attrs(full_reason: str | None, window: DecodeWindowRun | None) -> dict[str, Any]:
    """How a trial's timed runs were made, for its attrs: split (with the window) or full-length (and why)."""
    if window is None:
        return {"protocol": "full-length", "protocol_reason": full_reason}
    return {
        "protocol": "split",
        "decode_window_context": window.where.context_tokens,
        "decode_window_steps": window.where.steps,
        "window_fill_s": window.fill_s,
    }
