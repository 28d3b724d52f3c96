"""Wall time of whole studies, as a user runs them: ``python -m kvopt model=… profile=…``.

Each case runs the CLI in a fresh process with a fresh SQLite storage and its default
budget, ``--repeats`` times; the median wall time and the machine go into a JSON file
under benchmarks/ and a markdown table on stdout.

    python scripts/bench_wall_time.py --case tiny-gpt2:ci-micro --repeats 3
    python scripts/bench_wall_time.py --case gpt2:rag --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

from kvopt.machine import machine_info
from kvopt_bench.common import script_main
from kvopt_bench.studyrun import run_study

REPO = Path(__file__).resolve().parent.parent


def run_case(model: str, profile: str, extra: list[str], log_dir: Path) -> dict:
    # Keep what the user saw and the full results, next to the timing.
    run = run_study(model, profile, extra, log_dir=log_dir, name=f"{model}-{profile}")
    payload = run["results"]
    states = [t["state"] for t in payload.get("trials", [])]
    return {
        "wall_s": run["wall_s"],
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "recommendation": (payload.get("recommendation") or {}).get("candidate"),
        "gains_pct": (payload.get("recommendation") or {}).get("gains_pct"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", required=True, help="model:profile")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "wall_time.json")
    args = parser.parse_args()

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "cases": [],
    }
    print("| model | profile | runs | median wall s | min | max | trials (complete) | recommendation |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.case:
        model, profile = case.split(":")
        runs = [run_case(model, profile, args.extra, args.out.parent / "runs") for _ in range(args.repeats)]
        walls = [r["wall_s"] for r in runs]
        entry = {"model": model, "profile": profile, "runs": runs, "median_wall_s": statistics.median(walls)}
        report["cases"].append(entry)
        last = runs[-1]
        print(
            f"| {model} | {profile} | {len(runs)} | {entry['median_wall_s']:.1f} | {min(walls):.1f} | "
            f"{max(walls):.1f} | {last['trials']} ({last['complete']}) | {last['recommendation']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(args.out.read_text()) if args.out.exists() else []
    existing.append(report)
    args.out.write_text(json.dumps(existing, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    script_main(main)
