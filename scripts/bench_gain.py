"""Does the recommendation beat the default, provably, and how close is it to the best?

For gpt2 (random weights) and each profile, the real study runs as a user runs it
(``python -m kvopt model=gpt2 profile=…``; kvopt_bench.studyrun). From its results.json:
the confirmed gain of the recommendation over the baseline with its confidence interval
(interleaved, paired rounds). Then the recommendation is placed in a recorded grid: its
profile score (kvopt.select.profile_score, the profile's weights, against the grid's
baseline) vs the grid's best candidate, both from the same grid measurements. A grid
recorded on another workload than the profile's is reported as such
(``workload_matches: false``): then the comparison is only indicative.

    python scripts/bench_gain.py --profiles rag chat-agent --grid chat-agent=benchmarks/grid_gpt2-chat-agent.json
    python scripts/bench_gain.py --compare-only --grid …   # re-place the saved runs in other grids
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from kvopt.errors import ConfigError
from kvopt.select import Result, profile_score
from kvopt.space import candidate_key
from kvopt_bench.common import compose_config, provenance, script_main, write_json
from kvopt_bench.grid import grid_results
from kvopt_bench.studyrun import run_study

REPO = Path(__file__).resolve().parent.parent


def place_in_grid(
    rec: dict[str, Any],
    study_space: dict[str, list[Any]],
    grid: dict[str, Any],
    weights: dict[str, float],
    workload: dict[str, Any],
) -> dict[str, Any]:
    """The recommendation's profile score in the grid vs the grid's best (all candidates,
    and those of the study's own search space)."""
    results = grid_results(grid)
    base = next((r for r in results if r.is_baseline), None)
    if base is None:
        raise ConfigError(["--grid: the grid has no measured baseline row; allowed: a grid from record_grid.py"])
    scored = sorted(((profile_score(r, base.values, weights), r) for r in results), key=lambda x: -x[0])
    in_space = [(s, r) for s, r in scored if all(r.params.get(k) in v for k, v in study_space.items())]
    mine = next(((s, r) for s, r in scored if candidate_key(r.params) == candidate_key(rec["params"])), None)

    def best(pool: list[tuple[float, Result]]) -> dict[str, Any] | None:
        if not pool:
            return None
        s, r = pool[0]
        return {"candidate": r.label, "score": s, "values": r.values}

    matches = all(grid["workload"][k] == workload[k] for k in ("prompt_tokens", "new_tokens"))
    out: dict[str, Any] = {
        "grid_workload": grid["workload"],
        "workload_matches": matches,
        "grid_candidates": len(results),
        "study_space_candidates_in_grid": len(in_space),
        "grid_best": best(scored),
        "grid_best_in_study_space": best(in_space),
        "recommendation_in_grid": mine is not None,
    }
    if mine is not None:
        score = mine[0]
        out["recommendation_score"] = score
        out["recommendation_rank"] = 1 + [r.label for _, r in scored].index(mine[1].label)
        for key in ("grid_best", "grid_best_in_study_space"):
            if out[key] is not None:
                # exp(score gap) - 1: how much better the best is, in the profile's weighted log-ratio units.
                out[f"shortfall_vs_{key}_pct"] = (math.exp(out[key]["score"] - score) - 1.0) * 100.0
    return out


def gain_summary(run: dict[str, Any]) -> dict[str, Any]:
    res = run["results"]
    rec = res.get("recommendation") or {}
    return {
        "model": run["model"],
        "profile": run["profile"],
        "command": run["command"],
        "wall_s": run["wall_s"],
        "load_1min_before": run["load_1min_before"],
        "load_1min_after": run["load_1min_after"],
        "workload": res["workload"],
        "baseline": (res.get("baseline") or {}).get("candidate"),
        "recommendation": rec.get("candidate"),
        "params": rec.get("params"),
        "gains_pct": rec.get("gains_pct"),
        "gains_ci": rec.get("gains_ci"),
        "confirmed_rounds": rec.get("confirmed_rounds"),
        "note": rec.get("note"),
        "trials": len(res.get("trials", [])),
        "search_space": res["search_space"]["choices"],
    }


def _parse_grids(specs: list[str]) -> dict[str, Path]:
    grids = {}
    for spec in specs:
        profile, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise ConfigError([f"--grid: got {spec!r}; allowed: PROFILE=PATH of a grid JSON from record_grid.py"])
        grids[profile] = Path(path)
    return grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--profiles", nargs="+", default=["rag", "chat-agent"])
    parser.add_argument(
        "--grid", action="append", default=[], help="PROFILE=PATH: place that profile's recommendation in this grid"
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more kvopt overrides for every study")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gain.json")
    parser.add_argument(
        "--compare-only", action="store_true", help="reuse the runs saved in --out; only place them in the grids"
    )
    parser.add_argument(
        "--from-results",
        action="append",
        default=[],
        metavar="PATH",
        help="also report a study already run: its results.json (no load averages, no timeline)",
    )
    args = parser.parse_args()
    grids = _parse_grids(args.grid)
    if args.compare_only and (args.out.is_file() or not args.from_results):
        if not args.out.is_file():
            raise ConfigError([f"--compare-only: no saved runs at {args.out}; run without --compare-only first"])
        report = json.loads(args.out.read_text())
    elif args.compare_only:  # only studies run earlier: a fresh report of them
        report = {**provenance(), "cases": []}
    else:
        report = {**provenance(), "cases": []}
        for profile in args.profiles:
            run = run_study(
                args.model, profile, args.extra, log_dir=args.out.parent / "runs", name=f"gain_{args.model}-{profile}"
            )
            report["cases"].append({**gain_summary(run), "run": run})
            write_json(args.out, report)  # keep what is done if a later case fails
    for path in map(Path, args.from_results):
        if not path.is_file():
            raise ConfigError([f"--from-results: got {str(path)!r}, which is not a file; allowed: a results.json"])
        res = json.loads(path.read_text())
        run = {
            "model": res["model"],
            "profile": res["profile"],
            "command": f"(study run earlier) {path}",
            "wall_s": res.get("wall_s"),
            "load_1min_before": None,
            "load_1min_after": None,
            "results": res,
        }
        report["cases"].append({**gain_summary(run), "from_results": str(path)})
    print(
        "| model | profile | recommendation | TTFT gain [CI] | decode gain [CI] | memory gain | rounds "
        "| grid (workload matches) | rank in grid | shortfall vs grid best |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in report["cases"]:
        grid_path = grids.get(case["profile"])
        if grid_path is not None:
            cfg = compose_config(case["model"], case["profile"], [])
            case["grid"] = {
                "path": str(grid_path),
                **place_in_grid(
                    {"params": case["params"]},
                    case["search_space"],
                    json.loads(grid_path.read_text()),
                    cfg.profile.weights,
                    case["workload"],
                ),
            }
        print(_row(case))
    write_json(args.out, report)
    print(f"written: {args.out}")


def _ci(g: dict[str, Any] | None) -> str:
    if not g:
        return "–"
    if g.get("ci_low") is None:
        return f"{g['pct']:+.1f}%"
    return f"{g['pct']:+.1f}% [{g['ci_low']:+.1f}, {g['ci_high']:+.1f}] ({g['ci_coverage']:.0%})"


def _row(case: dict[str, Any]) -> str:
    ci = case.get("gains_ci") or {}
    g = case.get("grid")
    where = "–" if g is None else f"{Path(g['path']).name} ({'yes' if g['workload_matches'] else 'no'})"
    rank = "–" if not g or "recommendation_rank" not in g else f"{g['recommendation_rank']} of {g['grid_candidates']}"
    short = (
        "–"
        if not g or "shortfall_vs_grid_best_pct" not in g
        else (
            f"{g['shortfall_vs_grid_best_pct']:.1f}% "
            f"(study space: {g.get('shortfall_vs_grid_best_in_study_space_pct', 0):.1f}%)"
        )
    )
    return (
        f"| {case['model']} | {case['profile']} | {case['recommendation']} | {_ci(ci.get('ttft_ms'))} | "
        f"{_ci(ci.get('decode_tok_s'))} | {_ci(ci.get('peak_mem_mb'))} | {case['confirmed_rounds']} | {where} "
        f"| {rank} | {short} |"
    )


if __name__ == "__main__":
    script_main(main)
