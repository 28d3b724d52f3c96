"""Does the same command give the same answer? Fresh studies of one command, side by side.

Each run is ``python -m kvopt model=… profile=…`` in a fresh process with its own SQLite
storage and its own seed (``seed=0, 1, …``), with the command's default budget. Reported:

- the recommendation (and tie set) of every run, and whether they agree;
- the spread (max − min) of the confirmed TTFT and decode gains, in percentage points;
- wall time per run and its median;
- per-trial precision: each measured trial's TTFT and decode median CI half-width (±%
  at the coverage stored), its repetitions, batch size, protocol, and noise flag;
- each confirmation's decode-window vs full-length checks.

Results go to benchmarks/repeat.json (and each run's terminal output and results.json to
benchmarks/repeat/), with a markdown summary on stdout.

    python scripts/bench_repeat.py --model gpt2 --profile rag --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kvopt.machine import machine_info
from kvopt_bench.common import script_main
from kvopt_bench.studyrun import run_study

REPO = Path(__file__).resolve().parent.parent


def _half_width_pct(stats: dict[str, float] | None) -> float | None:
    """The median's CI half-width in % of the median (None without stats)."""
    if not stats or not stats.get("median"):
        return None
    return (stats["ci_high"] - stats["ci_low"]) / 2.0 / stats["median"] * 100.0


def trial_precision(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Per measured trial (not reused): how precisely its medians are known."""
    rows = []
    for t in payload.get("trials", []):
        attrs = t.get("user_attrs") or {}
        if t["state"] != "COMPLETE" or "reused_from" in attrs or "ttft_ms_stats" not in attrs:
            continue
        ttft, decode = attrs["ttft_ms_stats"], attrs["decode_tok_s_stats"]
        rows.append(
            {
                "number": t["number"],
                "candidate": attrs.get("candidate"),
                "batch_size": t["params"].get("batch_size"),
                "protocol": attrs.get("protocol", "full-length"),
                "repetitions": attrs.get("repetitions"),
                "timed_runs_s": attrs.get("timed_runs_s"),
                "ttft_ci_pct": _half_width_pct(ttft),
                "decode_ci_pct": _half_width_pct(decode),
                "ci_coverage": min(ttft.get("ci_coverage", 0.0), decode.get("ci_coverage", 0.0)),
                "noisy": bool(attrs.get("noisy")),
            }
        )
    return rows


def summarize_run(run: dict[str, Any]) -> dict[str, Any]:
    """What one run answered and what it cost."""
    payload = run["results"]
    rec = payload.get("recommendation") or {}
    confirmation = payload.get("confirmation") or {}
    gains = (confirmation.get("gains") or {}).get(str(rec.get("number")), {})
    numbers = {t["number"]: (t.get("user_attrs") or {}).get("candidate") for t in payload.get("trials", [])}
    return {
        "wall_s": run["wall_s"],
        "load_1min_before": run["load_1min_before"],
        "load_1min_after": run["load_1min_after"],
        "recommendation": rec.get("candidate"),
        "confirmed": confirmation.get("confirmed"),
        "rounds": confirmation.get("rounds"),
        "stopped_because": confirmation.get("stopped_because"),
        "tie_set": sorted(numbers.get(n) or str(n) for n in confirmation.get("tie_set", [])),
        "ttft_gain_pct": (gains.get("ttft_ms") or {}).get("pct"),
        "decode_gain_pct": (gains.get("decode_tok_s") or {}).get("pct"),
        "notes": confirmation.get("notes", []),
        "window_checks": confirmation.get("window_checks", []),
        "trials": trial_precision(payload),
        "command": run["command"],
    }


def _spread(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) - min(known) if known else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2")
    parser.add_argument("--profile", default="rag")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "repeat.json")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs: got {args.runs}; allowed: an integer >= 1")
    runs = []
    for seed in range(args.runs):
        run = run_study(
            args.model,
            args.profile,
            [f"seed={seed}", *args.extra],
            log_dir=args.out.parent / "repeat",
            name=f"{args.model}-{args.profile}-seed{seed}",
        )
        runs.append(summarize_run(run))
        print(f"run {seed}: {runs[-1]['recommendation']} in {runs[-1]['wall_s']:.0f} s", flush=True)
    answers = {(r["recommendation"], tuple(r["tie_set"])) for r in runs}
    trials = [t for r in runs for t in r["trials"]]
    small = [t for t in trials if (t["batch_size"] or 1) <= 4]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": args.model,
        "profile": args.profile,
        "extra": args.extra,
        "runs": runs,
        "same_answer": len(answers) == 1,
        "ttft_gain_spread_pp": _spread([r["ttft_gain_pct"] for r in runs]),
        "decode_gain_spread_pp": _spread([r["decode_gain_pct"] for r in runs]),
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "trials_within_3pct": sum(
            1 for t in small if (t["ttft_ci_pct"] or 99) <= 3.0 and (t["decode_ci_pct"] or 99) <= 3.0
        ),
        "trials_batch_le_4": len(small),
        "noisy_trials": sum(t["noisy"] for t in trials),
        "measured_trials": len(trials),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n| run | recommendation | confirmed | rounds | tie set | TTFT gain | decode gain | wall s | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(runs):
        gain = [f"{g:+.1f}%" if g is not None else "-" for g in (r["ttft_gain_pct"], r["decode_gain_pct"])]
        print(
            f"| {i} | {r['recommendation']} | {r['confirmed']} | {r['rounds']} | {', '.join(r['tie_set']) or '-'} | "
            f"{gain[0]} | {gain[1]} | {r['wall_s']:.0f} | {r['load_1min_before']:.1f}–{r['load_1min_after']:.1f} |"
        )
    spread = [report["ttft_gain_spread_pp"], report["decode_gain_spread_pp"]]
    print(
        f"\nsame answer in every run: {report['same_answer']}; spread of confirmed gains (pp): TTFT "
        f"{spread[0] if spread[0] is None else round(spread[0], 1)}, decode "
        f"{spread[1] if spread[1] is None else round(spread[1], 1)}; median wall {report['median_wall_s']:.0f} s; "
        f"trials (batch <= 4) within ±3% on both medians: {report['trials_within_3pct']} of "
        f"{report['trials_batch_le_4']}; noisy trials: {report['noisy_trials']} of {report['measured_trials']}"
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    script_main(main)
