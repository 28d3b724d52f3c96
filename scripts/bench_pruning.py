"""Does dominance pruning save time without ever pruning a candidate of the true front?

1. Record: every candidate of a search space is measured with a fixed number of timed runs
   (no pruning), and the raw runs are saved with the machine (benchmarks/grid_<model>.json).
2. Replay: for many random candidate orders (baseline first, as in a study), kvopt's rule
   (`kvopt.select.dominated_by`, the function trials use) is applied to the recorded runs as
   they would arrive. It reports the share of timed runs saved and how often a candidate of
   the true front (medians of all recorded runs) was pruned — which must be never.

    python scripts/bench_pruning.py --model tiny-llama --runs 10 --seeds 20
    python scripts/bench_pruning.py --replay benchmarks/grid_tiny-llama.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def record(model: str, profile: str, runs: int, overrides: list[str]) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    from kvopt.cli import conf_dir, quiet_libraries
    from kvopt.config import validate
    from kvopt.engine.loading import ModelLoader, resolve_weights
    from kvopt.engine.workload import make_workload
    from kvopt.machine import machine_info
    from kvopt.protocol import measure_candidate
    from kvopt.space import Candidate

    quiet_libraries()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = validate(compose(config_name="config", overrides=[f"model={model}", f"profile={profile}", *overrides]))
    device = torch.device("cpu")
    loader = ModelLoader(cfg.model, resolve_weights(cfg.model), device, cfg.seed)
    workload = make_workload(cfg.profile, cfg.model)
    space = cfg.search_space
    rows = []
    for cache, attn, dtype, batch in itertools.product(
        space.cache_implementation, space.attn_implementation, space.dtype, space.batch_size
    ):
        cand = Candidate(cache, attn, dtype, batch)
        loaded, _ = loader.get(dtype, attn)
        m = measure_candidate(loaded, cand, workload, device, warmup=1, repetitions=runs, seed=cfg.seed)
        rows.append({"candidate": cand.label, "baseline": cand == Candidate("dynamic", "sdpa", cfg.model.dtype, 1),
                     "ttft_ms": m.ttft_ms, "decode_tok_s": m.decode_tok_s, "peak_mem_mb": m.values[2]})
        print(f"recorded {cand.label}: ttft {m.values[0]:.2f} ms, {m.values[1]:.1f} tok/s, {m.values[2]:.2f} MB")
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "model": model, "profile": profile, "runs_per_candidate": runs, "rows": rows}


def replay(grid: dict, seeds: int, margin: float) -> dict:
    from kvopt.select import Result, dominated_by, pareto_front

    def median_result(i: int, row: dict) -> Result:
        values = {"ttft_ms": statistics.median(row["ttft_ms"]),
                  "decode_tok_s": statistics.median(row["decode_tok_s"]),
                  "peak_mem_mb": row["peak_mem_mb"]}
        return Result(i, {}, row["candidate"], values, row["baseline"])

    rows = grid["rows"]
    truth = {r.number for r in pareto_front([median_result(i, row) for i, row in enumerate(rows)])}
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
                completed.append(median_result(i, row))
        saved.append(1 - runs_used / total_runs)
        pruned.append(n_pruned)
        wrong.append(n_wrong)
    return {"candidates": len(rows), "true_front": sorted(truth), "seeds": seeds, "margin": margin,
            "runs_saved_median": statistics.median(saved), "runs_saved_min": min(saved),
            "runs_saved_max": max(saved), "pruned_median": statistics.median(pruned),
            "true_front_pruned_total": sum(wrong)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--profile", default="chat-agent")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--replay", type=Path, help="replay a recorded grid instead of recording")
    parser.add_argument("--override", nargs="*", default=[
        "search_space.cache_implementation=[dynamic,static]", "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32]", "search_space.batch_size=[1,2,4,8]",
    ])
    args = parser.parse_args()
    if args.replay:
        grid = json.loads(args.replay.read_text())
    else:
        grid = record(args.model, args.profile, args.runs, args.override)
        out = REPO / "benchmarks" / f"grid_{args.model}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(grid, indent=2))
        print(f"written: {out}")
    result = replay(grid, args.seeds, args.margin)
    print("| model | candidates | true front | seeds | timed runs saved (median, min–max) | pruned per study (median) | true-front candidates pruned |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {grid['model']} | {result['candidates']} | {len(result['true_front'])} | {result['seeds']} | "
          f"{result['runs_saved_median']:.0%} ({result['runs_saved_min']:.0%}–{result['runs_saved_max']:.0%}) | "
          f"{result['pruned_median']:g} | {result['true_front_pruned_total']} |")
    (REPO / "benchmarks" / f"pruning_{grid['model']}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
