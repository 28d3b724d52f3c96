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
import json
from pathlib import Path

from kvopt_bench.common import compose_config, script_main, write_json
from kvopt_bench.grid import record_grid
from kvopt_bench.replay import replay_pruning_rule

REPO = Path(__file__).resolve().parent.parent


def record(model: str, profile: str, runs: int, overrides: list[str]) -> dict:
    """Every candidate with exactly ``runs`` timed runs (no adaptive stop, no pruning)."""
    fixed = [
        *overrides,
        "measure.adaptive=false",
        f"profile.repetitions={runs}",
        "profile.warmup=1",
        "storage=memory",
        "scale.shared_device=flag",
    ]

    def show(i: int, n: int, row: dict) -> None:
        if row["status"] == "ok":
            print(
                f"recorded {row['candidate']}: ttft {row['ttft_ms_median']:.2f} ms, "
                f"{row['decode_tok_s_median']:.1f} tok/s, {row['peak_mem_mb']:.2f} MB",
                flush=True,
            )

    grid = record_grid(compose_config(model, profile, fixed), fixed, on_row=show)
    grid["runs_per_candidate"] = runs
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--profile", default="chat-agent")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--replay", type=Path, help="replay a recorded grid instead of recording")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[
            "search_space.cache_implementation=[dynamic,static]",
            "search_space.attn_implementation=[eager,sdpa]",
            "search_space.dtype=[float32]",
            "search_space.batch_size=[1,2,4,8]",
        ],
    )
    args = parser.parse_args()
    if args.replay:
        grid = json.loads(args.replay.read_text())
    else:
        grid = record(args.model, args.profile, args.runs, args.override)
        out = REPO / "benchmarks" / f"grid_{args.model}.json"
        write_json(out, grid)
        print(f"written: {out}")
    result = replay_pruning_rule(grid, args.seeds, args.margin)
    print(
        "| model | candidates | true front | seeds | timed runs saved (median, min–max) "
        "| pruned per study (median) | true-front candidates pruned |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {grid['model']} | {result['candidates']} | {len(result['true_front'])} | {result['seeds']} | "
        f"{result['runs_saved_median']:.0%} ({result['runs_saved_min']:.0%}–{result['runs_saved_max']:.0%}) | "
        f"{result['pruned_median']:g} | {result['true_front_pruned_total']} |"
    )
    write_json(REPO / "benchmarks" / f"pruning_{grid['model']}.json", result)


if __name__ == "__main__":
    script_main(main)
