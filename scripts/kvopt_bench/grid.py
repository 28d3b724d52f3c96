"""A recorded grid: every candidate of a search space measured with kvopt's own protocol.

The table is what the replay benchmarks answer from, so each row keeps the raw timed
repetitions (the recorded noise), the medians, memory, the untimed costs of the trial
(load, first call, warm-up; a memory run in tables of older kvopt) and, for a candidate that
cannot run, the reason.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from kvopt.config import KvoptConfig
from kvopt.engines import DEFAULT_ENGINE, candidate_type
from kvopt.engines.base import Engine
from kvopt.engines.transformers.candidate import Candidate as TransformersCandidate
from kvopt.engines.transformers.candidate import transformers_space
from kvopt.select import Result
from kvopt.space import Candidate, SearchSpace
from kvopt_bench.common import load_average, provenance

__all__ = ["record_grid", "space_from_grid", "grid_rows_ok", "grid_results", "median_values", "untimed_seconds"]


def _measurement_order(engine: Engine, candidates: list[Candidate], seed: int) -> list[Candidate]:
    """Shuffled, so drift of the shared machine does not line up with any setting; grouped
    by the model each loads (Transformers: dtype and attention) so each is loaded once (load
    time is not measured anyway)."""
    rng = random.Random(seed)
    groups: dict[tuple[Any, ...], list[Candidate]] = {}
    for cand in candidates:
        groups.setdefault(engine.model_key(cand), []).append(cand)
    keys = list(groups)
    rng.shuffle(keys)
    order = []
    for key in keys:
        rng.shuffle(groups[key])
        order.extend(groups[key])
    return order


def _measure_row(engine: Any, loader: Any, cand: Candidate, cfg: KvoptConfig, workload: Any) -> dict[str, Any]:
    from kvopt.failures import failure_reason
    from kvopt.protocol import measure_candidate

    row: dict[str, Any] = {"load_1min_before": load_average()}
    start = time.perf_counter()
    try:
        loaded, reused = loader.get(cand)
        m = measure_candidate(
            engine,
            loaded,
            cand,
            workload,
            warmup=cfg.profile.warmup,
            repetitions=cfg.profile.repetitions,
            seed=cfg.seed,
            measure=cfg.measure,
        )
    except Exception as exc:  # a candidate that cannot run is a row of the table too
        row.update({"status": "failed", "reason": failure_reason(exc).reason, "wall_s": time.perf_counter() - start})
        return row
    ttft, tput, mem = m.values
    row.update(
        {
            "status": "ok",
            "reason": None,
            "ttft_ms": m.ttft_ms,
            "decode_tok_s": m.decode_tok_s,
            "ttft_ms_median": ttft,
            "decode_tok_s_median": tput,
            "peak_mem_mb": mem,
            "n": len(m.ttft_ms),
            "stopped_because": m.stopped_because,
            "noisy": m.noisy,
            "kv_cache_mb": m.to_attrs()["kv_cache_mb"],
            "weights_mb": m.to_attrs()["weights_mb"],
            "load_s": 0.0 if reused else loaded.load_s,
            "first_call_s": m.first_call_s,
            **{k: m.extra[k] for k in ("memory_run_s", "warmup_s", "timed_runs_s")},
            "wall_s": time.perf_counter() - start,
        }
    )
    return row


def record_grid(
    cfg: KvoptConfig,
    overrides: list[str],
    *,
    order_seed: int = 0,
    on_row: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every candidate of the probed search space ``cfg`` describes, once each."""
    from kvopt.runner import prepare

    p = prepare(cfg)
    cfg = p.cfg  # the resolved model
    space = p.space
    order = _measurement_order(p.engine, space.candidates(), order_seed)
    loader = p.engine.loader()
    rows = []
    load_before = load_average()
    start = time.perf_counter()
    for i, cand in enumerate(order):
        row = {
            "candidate": cand.label,
            "params": cand.params(),
            "settings": cand.as_dict(),
            "baseline": cand == space.baseline,
            **_measure_row(p.engine, loader, cand, cfg, p.workload),
        }
        rows.append(row)
        if on_row is not None:
            on_row(i, len(order), row)
    wall = time.perf_counter() - start
    loader.release()
    return {
        **provenance(),
        "engine": p.engine.name,
        "model": cfg.model.name,
        # The model as resolved (a GGUF's figures): what a replay's memory model needs.
        "model_config": dataclasses.asdict(cfg.model),
        "profile": cfg.profile.name,
        "overrides": overrides,
        "weights": p.weights.kind,
        "device": str(p.device),
        "workload": {
            "prompt_tokens": p.workload.prompt_tokens,
            "new_tokens": p.workload.new_tokens,
            "shared_prefix_tokens": p.workload.shared_prefix_tokens,
            "note": p.workload.note,
        },
        "profile_config": cfg.raw["profile"],
        "measure": cfg.raw["measure"],
        "seed": cfg.seed,
        "space": {
            # Each knob's values as the study sampled them (a grid of any engine).
            "knobs": {k.name: list(k.values) for k in space.knobs},
            "baseline_params": space.baseline.params(),
            "prefix_share": space.prefix_share,
            "baseline": space.baseline.as_dict(),
            "dropped": space.dropped,
            "size": space.size,
        },
        "candidates": len(rows),
        "failed": sum(r["status"] != "ok" for r in rows),
        "grid_wall_s": wall,
        "load_1min_before": load_before,
        "load_1min_after": load_average(),
        "shared_machine_note": "the CPU was shared with other processes while recording; see load_1min_*",
        "rows": rows,
    }


def space_from_grid(grid: dict[str, Any]) -> SearchSpace:
    """The search space a grid was recorded on, as a study would sample it.

    A grid lists each knob's values (``space.knobs``); grids recorded before engines had
    names list the Transformers engine's choices field by field.
    """
    s = grid["space"]
    if "knobs" in s:
        kind = candidate_type(grid.get("engine", DEFAULT_ENGINE))
        values = s["knobs"]
        return SearchSpace(
            knobs=tuple(dataclasses.replace(k, values=tuple(values.get(k.name, ()))) for k in kind.KNOBS),
            baseline=kind.from_params(s["baseline_params"]),
            candidate_type=kind,
            prefix_share=float(s.get("prefix_share", 0.0)),
            dropped=dict(s["dropped"]),
        )
    return transformers_space(
        cache_implementation=list(s["cache_implementation"]),
        attn_implementation=list(s["attn_implementation"]),
        dtype=list(s["dtype"]),
        batch_size=list(s["batch_size"]),
        baseline=TransformersCandidate(**s["baseline"]),
        quantized_backends=list(s["quantized_backends"]),
        quantized_nbits=list(s["quantized_nbits"]),
        static_compile=list(s["static_compile"]),
        # Grids recorded before prefix reuse existed: not offered.
        prefix_reuse=list(s.get("prefix_reuse", [False])),
        prefix_share=float(s.get("prefix_share", 0.0)),
        dropped=dict(s["dropped"]),
    )


def grid_rows_ok(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows that ran (failed candidates have no timings)."""
    return [r for r in grid["rows"] if r.get("status", "ok") == "ok"]


def median_values(row: dict[str, Any]) -> dict[str, float]:
    """A row's objectives over all its recorded repetitions: the table's truth."""
    return {
        "ttft_ms": statistics.median(row["ttft_ms"]),
        "decode_tok_s": statistics.median(row["decode_tok_s"]),
        "peak_mem_mb": row["peak_mem_mb"],
    }


def grid_results(grid: dict[str, Any]) -> list[Result]:
    """The rows that ran as results at their full-table medians, numbered as in ``grid_rows_ok``."""
    from kvopt.protocol import describe_stats

    rows = grid_rows_ok(grid)
    # Tables of the first pruning benchmark (benchmarks/grid_tiny-llama.json) carry no params.
    # The medians' statistics (CIs) ride along as a trial's would, for noise-aware rules.
    return [
        Result(
            i,
            r.get("params", {}),
            r["candidate"],
            median_values(r),
            r["baseline"],
            {
                "baseline": r["baseline"],
                "ttft_ms_stats": describe_stats(r["ttft_ms"]),
                "decode_tok_s_stats": describe_stats(r["decode_tok_s"]),
            },
        )
        for i, r in enumerate(rows)
    ]


def untimed_seconds(row: dict[str, Any]) -> float:
    """A row's untimed generate seconds: first call, warm-up and, in older tables, the memory run."""
    return row.get("first_call_s", 0.0) + row.get("memory_run_s", 0.0) + row.get("warmup_s", 0.0)
