"""How fast does each sampler find the front? Whole studies replayed on a recorded grid.

For each sampler (profile — kvopt's default —, tpe, gp, nsga2, random, and the grid order) and seed, a complete kvopt
study runs against the recorded table (kvopt_bench.replay: kvopt's objective, sampler
construction and search space; each ``generate`` replaced by a draw from the candidate's
recorded repetitions). After each trial, the hypervolume of the front found so far — its
candidates at their full-table medians — is divided by the hypervolume of the table's
true front (objectives min-max normalised over the table, throughput flipped; reference
point 1.1 on every axis). Reported: trials and replayed measurement seconds to reach 95%
and 99%, median and IQR over seeds; with dominance pruning on and off; and measurements until
a candidate within 2% of the profile's best score is measured. For the profile sampler,
studies are also replayed with the convergence stop (``study.converge``, as a run does):
where they stop and whether their recommendation is the grid's best within the grid's own
noise — cold, and warm-started from each ``--warm-from`` grid. The recorded runs are also
replayed through the pruning rule alone in random orders.

    python scripts/bench_search.py --grid benchmarks/grid_gpt2.json --seeds 20

With ``--weightings``, each grid is replayed instead under every shipped profile's weights
(``conf/profile/*.yaml``) and ``--random-weightings`` random ones (Dirichlet, fixed seed):
per grid, the median and the worst weighting of the measurements to within 2% of the
weighting's best and to 95% hypervolume, for the profile sampler, random and the grid
order (pruning on), and how often the convergence stop fires before the best is measured
(``kvopt_bench.weightings``; written to ``benchmarks/weightings_<grid name>.json``):

    python scripts/bench_search.py --weightings --grid benchmarks/grid_tiny-llama-large.json --seeds 20
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from kvopt.errors import ConfigError
from kvopt_bench.common import provenance, quartiles, script_main, write_json
from kvopt_bench.grid import grid_rows_ok, untimed_seconds
from kvopt_bench.hypervolume import REFERENCE
from kvopt_bench.replay import (
    ReplayTable,
    StudyTrace,
    replay_config,
    replay_pruning_rule,
    replay_study,
    warm_start_from_grid,
)
from kvopt_bench.weightings import evaluate_grid, random_weightings, shipped_weightings, targets, with_recorded

REPO = Path(__file__).resolve().parent.parent
SAMPLERS = ("profile", "tpe", "gp", "nsga2", "random", "grid")
WEIGHTING_SAMPLERS = ("profile", "random", "grid")
LEVELS = (0.95, 0.99)


def _at(trace: StudyTrace, n: int) -> float:
    """Hypervolume ratio after ``n`` trials (a study that stopped early keeps its last value)."""
    return trace.hv_ratio[min(n, len(trace.hv_ratio)) - 1]


def _at_measurements(trace: StudyTrace, n: int) -> float:
    """Hypervolume ratio once ``n`` distinct candidates have been measured (or at the end)."""
    last = next((i for i, m in enumerate(trace.measured) if m >= n), len(trace.measured) - 1)
    # Trials after it that only reuse a measurement add nothing, so the ratio there is final.
    return trace.hv_ratio[last]


def summarize(traces: list[StudyTrace], size: int, full_seconds: float) -> dict[str, Any]:
    budget30 = max(1, math.floor(0.3 * size))
    out: dict[str, Any] = {"seeds": len(traces), "budget_30pct_trials": budget30}
    for level in LEVELS:
        key = f"{round(level * 100)}"
        trials = [t.trials_to(level) or math.inf for t in traces]
        seconds = [t.seconds_to(level) if t.seconds_to(level) is not None else math.inf for t in traces]
        out[f"trials_to_{key}"] = quartiles(trials)
        out[f"measurements_to_{key}"] = quartiles([t.measurements_to(level) or math.inf for t in traces])
        out[f"seconds_to_{key}_share"] = quartiles([s / full_seconds for s in seconds])
        out[f"never_reached_{key}"] = sum(t.trials_to(level) is None for t in traces)
    out["hv_at_30pct"] = quartiles([_at(t, budget30) for t in traces])
    # The same budget counted in measurements: after the trial that measured the budget30-th
    # distinct candidate (trials that reuse a measurement cost no generate call).
    out["hv_at_30pct_measurements"] = quartiles([_at_measurements(t, budget30) for t in traces])
    # The profile's best candidate (what the recommendation is chosen for): trials to find
    # it, or one within 5% of its score; and the shortfall left after 30% of the trials.
    out["trials_to_best"] = quartiles([t.trials_to_score(0.0) or math.inf for t in traces])
    out["trials_to_best_within_5pct"] = quartiles([t.trials_to_score(5.0) or math.inf for t in traces])
    # What the user waits for: candidates measured (and measuring seconds) until one within
    # 2% of the profile's best score has been measured.
    out["measurements_to_best_within_2pct"] = quartiles([t.measurements_to_score(2.0) or math.inf for t in traces])
    out["measurements_to_best_within_2pct_share"] = quartiles(
        [(t.measurements_to_score(2.0) or math.inf) / size for t in traces]
    )
    out["seconds_to_best_within_2pct"] = quartiles(
        [t.seconds[t.trials_to_score(2.0) - 1] if t.trials_to_score(2.0) else math.inf for t in traces]
    )
    out["never_within_2pct"] = sum(t.trials_to_score(2.0) is None for t in traces)
    out["measurements_to_95_share"] = quartiles([(t.measurements_to(0.95) or math.inf) / size for t in traces])
    out["shortfall_at_30pct"] = quartiles([t.shortfall_pct[min(budget30, len(t.shortfall_pct)) - 1] for t in traces])
    out["hv_final"] = quartiles([t.hv_ratio[-1] for t in traces])
    out["trials_run"] = quartiles([len(t.hv_ratio) for t in traces])
    out["seconds_total"] = quartiles([t.seconds[-1] for t in traces])
    out["dominance_pruned"] = quartiles([t.dominance_pruned for t in traces])
    out["true_front_pruned_total"] = sum(t.true_front_pruned for t in traces)
    longest = max(len(t.hv_ratio) for t in traces)
    out["hv_curve_median"] = [statistics.median(_at(t, n) for t in traces) for n in range(1, longest + 1)]
    return out


def summarize_stop(traces: list[StudyTrace], size: int) -> dict[str, Any]:
    """Where the convergence stop ended the studies, and whether they recommended the best."""
    stops = [t.measured[-1] for t in traces]
    return {
        "seeds": len(traces),
        "stopped_by_rule": sum(t.stopped_at is not None for t in traces),
        "measurements_at_stop": quartiles(stops),
        "share_at_stop": quartiles([m / size for m in stops]),
        "seconds_at_stop": quartiles([t.seconds[-1] for t in traces]),
        "recommended_best_within_noise": sum(bool(t.recommended_is_best) for t in traces),
        "recommended_within_2pct": sum((t.recommended_shortfall_pct or 0.0) <= 2.0 for t in traces),
        "recommended_shortfall_pct": quartiles([t.recommended_shortfall_pct or 0.0 for t in traces]),
    }


def _fmt(q: dict[str, float | None], pct: bool = False) -> str:
    def one(v: float | None) -> str:
        if v is None:
            return "never"
        return f"{v:.0%}" if pct else f"{v:.3g}"

    return f"{one(q['median'])} [{one(q['q1'])}–{one(q['q3'])}]"


def _stop_runs(table: ReplayTable, cfg: Any, seeds: int, size: int, warm: Any, label: str) -> dict[str, Any]:
    """Profile sampler studies that stop by the convergence rule (as a run does by default)."""
    traces = [
        replay_study(table, cfg, seed, n_trials=size, pruning=True, converge=True, warm_start=warm)
        for seed in range(seeds)
    ]
    out = {**summarize(traces, size, 1.0), **summarize_stop(traces, size)}
    print(
        f"  profile, convergence stop, {label}: stops after {_fmt(out['measurements_at_stop'])} measurements "
        f"({_fmt(out['share_at_stop'], True)} of {size}); recommended the grid's best (within its noise) in "
        f"{out['recommended_best_within_noise']}/{seeds} seeds, "
        f"within 2% in {out['recommended_within_2pct']}/{seeds}; "
        f"within 2% after {_fmt(out['measurements_to_best_within_2pct'])} measurements",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", type=Path, nargs="+", required=True, help="tables written by scripts/record_grid.py (one or more)"
    )
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--gp-seeds", type=int, help="fewer seeds for gp, whose fits are slow (default: --seeds)")
    parser.add_argument(
        "--samplers",
        nargs="+",
        choices=SAMPLERS,
        help=f"default: {' '.join(SAMPLERS)}; with --weightings: {' '.join(WEIGHTING_SAMPLERS)}",
    )
    parser.add_argument("--margin", type=float, default=0.05, help="margin of the random-order pruning replay")
    parser.add_argument(
        "--out",
        type=Path,
        help="with one grid; default: benchmarks/search_<grid name>.json (--weightings: weightings_<grid name>.json)",
    )
    parser.add_argument(
        "--no-pruning-off",
        action="store_true",
        help="replay with dominance pruning only (the default of a study); faster on large grids",
    )
    parser.add_argument(
        "--warm-from",
        type=Path,
        nargs="*",
        default=[],
        help="other grids of the same space: also replay the profile sampler warm-started from each",
    )
    parser.add_argument(
        "--weightings",
        action="store_true",
        help="replay under every shipped profile's weights and random ones instead (see above)",
    )
    parser.add_argument("--random-weightings", type=int, default=8, help="with --weightings: how many random ones")
    parser.add_argument("--weighting-seed", type=int, default=0, help="with --weightings: seed of the random ones")
    args = parser.parse_args()
    if args.seeds < 1 or (args.gp_seeds is not None and args.gp_seeds < 1):
        parser.error(f"--seeds/--gp-seeds: got {args.seeds}/{args.gp_seeds}; allowed: integers >= 1")
    if args.random_weightings < 0:
        parser.error(f"--random-weightings: got {args.random_weightings}; allowed: integers >= 0")
    if args.out is not None and len(args.grid) > 1:
        parser.error(f"--out: got one path for {len(args.grid)} grids; allowed: --out with a single --grid")
    for path in (*args.grid, *args.warm_from):
        if not path.is_file():
            raise ConfigError(
                [
                    f"--grid/--warm-from: got {str(path)!r}, which is not a file; "
                    "allowed: a grid JSON from record_grid.py"
                ]
            )
    if args.weightings:
        weighting_runs(args)
        return
    args.samplers = args.samplers or list(SAMPLERS)
    for path in args.grid:
        search_run(args, path)


def weighting_runs(args: argparse.Namespace) -> None:
    """``--weightings``: every grid under every shipped and random weighting (kvopt_bench.weightings)."""
    samplers = args.samplers or list(WEIGHTING_SAMPLERS)
    weightings = [
        *shipped_weightings(REPO / "conf"),
        *random_weightings(args.random_weightings, args.weighting_seed),
    ]
    early = runs = 0
    for path in args.grid:
        grid = json.loads(path.read_text())
        ours = with_recorded(grid, weightings)
        print(
            f"grid {path.name}: {grid['model']}, {len(ours)} weightings (TTFT/decode/memory), {args.seeds} "
            f"seeds, pruning on; measurements, median [IQR] over seeds",
            flush=True,
        )
        print(
            "| weighting | weights | its best | sampler | measurements to within 2% of the best | "
            "measurements to 95% hypervolume | convergence stop: measurements; runs it fired in, before the best |"
        )
        print("|---|---|---|---|---|---|---|")
        start = time.process_time()
        result = evaluate_grid(
            grid, ours, seeds=args.seeds, samplers=samplers, log=lambda line: print(line, flush=True)
        )
        size = result["space_size"]
        summary = result["summary"]
        report: dict[str, Any] = {
            **provenance(),
            "grid": str(path),
            "model": grid["model"],
            "workload": grid["workload"],
            "recorded_weights": grid["profile_config"]["weights"],
            "pruning": True,
            "weighting_seed": args.weighting_seed,
            **result,
            "targets": targets(summary, result["weightings"], size) if "profile" in samplers else None,
            "replay_cpu_s": time.process_time() - start,
        }
        for name in samplers:
            for figure, label in (
                ("measurements_to_best_within_2pct", "within 2% of the best"),
                ("measurements_to_95", "95% hypervolume"),
            ):
                f = summary[name][figure]
                print(
                    f"  {name}: measurements to {label}: median over weightings {_one(f['median_over_weightings'])} "
                    f"({_share(f['median_over_weightings_share'])} of {size}), worst {_one(f['worst'])} "
                    f"({_share(f['worst_share'])}, {f['worst_weighting']})"
                )
        if "convergence_stop" in summary:
            stop = summary["convergence_stop"]
            early, runs = early + stop["early"], runs + stop["runs"]
            print(
                f"  convergence stop: fired in {stop['fired']}/{stop['runs']} runs, before a candidate within 2% of "
                f"the best was measured in {stop['early']} ({stop['early_share']:.1%}); recommended within 2% in "
                f"{stop['recommended_within_2pct']}"
            )
        if report["targets"] is not None:
            print(f"  targets: {report['targets']}")
        print(f"  replay CPU {report['replay_cpu_s']:.0f} s")
        out = args.out or REPO / "benchmarks" / f"weightings_{path.stem.removeprefix('grid_')}.json"
        write_json(out, report)
        print(f"written: {out}", flush=True)
    if runs and len(args.grid) > 1:
        print(f"convergence stop before the best, all grids: {early}/{runs} runs ({early / runs:.1%})")


def _one(v: float | None) -> str:
    return "never" if v is None else f"{v:.3g}"


def _share(v: float | None) -> str:
    return "never" if v is None else f"{v:.0%}"


def search_run(args: argparse.Namespace, path: Path) -> None:
    """One grid: every sampler replayed, as the module doc says."""
    grid = json.loads(path.read_text())
    table = ReplayTable(grid)
    size = table.space.size
    # Seconds an exhaustive grid spends measuring (no pruning, every repetition recorded).
    ok = grid_rows_ok(grid)
    full_seconds = sum(untimed_seconds(r) + r.get("timed_runs_s", 0) for r in ok)
    report: dict[str, Any] = {
        **provenance(),
        "grid": str(path),
        "model": grid["model"],
        "workload": grid["workload"],
        "space_size": size,
        "true_front": len(table.front_keys),
        "reference_point": REFERENCE,
        "grid_measuring_seconds": full_seconds,
        "samplers": {},
    }
    print(
        f"grid {path.name}: {grid['model']}, workload {grid['workload']['prompt_tokens']}+"
        f"{grid['workload']['new_tokens']} tokens, {size} candidates ({grid['failed']} failed), true front "
        f"{len(table.front_keys)}, {sum(r['noisy'] for r in ok)} flagged noisy, recorded in "
        f"{grid['grid_wall_s']:.0f} s ({full_seconds:.0f} s measuring), load average "
        f"{grid['load_1min_before']:.2f} before / {grid['load_1min_after']:.2f} after; "
        f"profile-best {table.best_score:+.3f} (grid noise ±{table.best_noise:.3f})"
    )
    print("trials to reach 95% / 99% of the table's hypervolume, median [IQR] over seeds")
    print(
        "| sampler | pruning | seeds | trials to 95% | trials to 99% | HV at 30% of trials | "
        "measurements to 95% | HV at 30% of measurements | "
        "measuring time to 95% (share of grid) | true-front pruned | trials to profile's best (within 5%) | "
        "measurements to within 2% of the profile's best (share) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.samplers:
        cfg = replay_config(grid, name)
        seeds = args.gp_seeds if name == "gp" and args.gp_seeds else args.seeds
        # The grid order visits every grid point (conditional options repeat candidates);
        # the others get as many trials as the space has candidates.
        n_trials = 10 * size if name == "grid" else size
        entry: dict[str, Any] = {}
        for pruning in (True,) if args.no_pruning_off else (True, False):
            start = time.perf_counter()
            traces = [replay_study(table, cfg, seed, n_trials=n_trials, pruning=pruning) for seed in range(seeds)]
            summary = summarize(traces, size, full_seconds)
            summary["replay_wall_s"] = time.perf_counter() - start
            entry["pruning_on" if pruning else "pruning_off"] = summary
            print(
                f"| {name} | {'on' if pruning else 'off'} | {seeds} | {_fmt(summary['trials_to_95'])} | "
                f"{_fmt(summary['trials_to_99'])} | {_fmt(summary['hv_at_30pct'], True)} | "
                f"{_fmt(summary['measurements_to_95'])} | {_fmt(summary['hv_at_30pct_measurements'], True)} | "
                f"{_fmt(summary['seconds_to_95_share'], True)} | {summary['true_front_pruned_total']} | "
                f"{_fmt(summary['trials_to_best'])} ({_fmt(summary['trials_to_best_within_5pct'])}) | "
                f"{_fmt(summary['measurements_to_best_within_2pct'])} "
                f"({_fmt(summary['measurements_to_best_within_2pct_share'], True)}) |",
                flush=True,
            )
        if "pruning_off" in entry:
            on, off = entry["pruning_on"], entry["pruning_off"]
            entry["pruning_time_saved"] = 1 - on["seconds_total"]["median"] / off["seconds_total"]["median"]
        if name == "profile":
            entry["convergence_stop"] = _stop_runs(table, cfg, seeds, size, None, "cold")
            for other in args.warm_from:
                warm = warm_start_from_grid(ReplayTable(json.loads(other.read_text())), table.space, cfg.profile)
                entry[f"warm_from_{other.stem.removeprefix('grid_')}"] = _stop_runs(
                    table, cfg, seeds, size, warm, f"warm from {other.name} (first: {warm.first[0].label})"
                )
        report["samplers"][name] = entry
    report["pruning_rule_random_orders"] = replay_pruning_rule(grid, args.seeds, args.margin)
    out = args.out or REPO / "benchmarks" / f"search_{path.stem.removeprefix('grid_')}.json"
    write_json(out, report)
    print(f"written: {out}")


if __name__ == "__main__":
    script_main(main)
