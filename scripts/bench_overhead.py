"""Where does a study's wall time go? Share spent outside the measured generate calls.

Each case runs a whole study as a user does (``python -m kvopt …``, kvopt_bench.studyrun)
and splits the process's wall time, from the trials' stored seconds (kvopt.protocol:
``timed_runs_s``, ``first_call_s``, ``memory_run_s``, ``warmup_s``; kvopt.trial:
``load_s``) and their start/end times in the storage, into:

  measured   the timed generate calls of the trials (what the objectives are made of)
  untimed    the first call (which carries the CPU memory probe), any further warm-up and,
             in tables of older kvopt, a separate memory run (generate, not timed)
  load       model loading
  wait       waiting for the device while another kvopt process measured (scale.shared_device)
  in-trial   the rest of each trial (memory prediction, pruning checks, storage writes)
  startup    imports, config, probe, study creation — until the first trial starts
  between    between trials (sampler, storage, callbacks)
  confirmed  the timed generate calls of the confirmation's interleaved rounds (the
             re-measurement of the finalists and the baseline the gain is computed from)
  confirm    the rest of the rounds (bookkeeping between the calls)
  after      the rest after the last trial: the confirmation's setup (loading and warming
             the finalists), the report, the results file, exit

Overhead = 1 − (measured + confirmed) / wall: the share outside measured generate calls.
Also given: the share outside the trials' timed calls alone (confirmation counted as
overhead), for comparison with the first tables. Studies of a kvopt that did not record
the confirmation's timed seconds count its rounds whole as "confirm".
``--from`` reads studies already run by bench_gain.py instead of running gpt2 again.

    python scripts/bench_overhead.py --case tiny-gpt2:ci-micro --from benchmarks/gain.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kvopt.errors import ConfigError, KvoptError
from kvopt_bench.common import provenance, script_main, write_json
from kvopt_bench.studyrun import run_study

REPO = Path(__file__).resolve().parent.parent
PARTS = ("measured", "confirmed", "untimed", "load", "wait", "in-trial", "startup", "between", "confirm", "after")


def breakdown(run: dict[str, Any]) -> dict[str, Any]:
    """Seconds and shares of the run's wall time per part (see the module docstring)."""
    timed = [t for t in run["timeline"] if t["start"] is not None and t["end"] is not None]
    if not timed:
        raise KvoptError(f"{run['model']}/{run['profile']}: the study has no finished trial to account for")
    if any("timed_runs_s" not in t for t in timed if "trial_s" in t):
        raise KvoptError("trials carry no timed_runs_s: the study was run by a kvopt older than this benchmark")
    total = lambda key: sum(t.get(key, 0.0) for t in timed)  # noqa: E731
    in_trials = sum(t["end"] - t["start"] for t in timed)
    first, last = min(t["start"] for t in timed), max(t["end"] for t in timed)
    confirmation = run["results"].get("confirmation") or {}
    rounds_s = confirmation.get("seconds", 0.0)
    confirmed = confirmation.get("timed_s", 0.0)
    seconds = {
        "measured": total("timed_runs_s"),
        "confirmed": confirmed,
        "untimed": total("first_call_s") + total("memory_run_s") + total("warmup_s"),
        "load": total("load_s"),
        "wait": total("device_wait_s"),
        "startup": first - run["started_at"],
        "between": (last - first) - in_trials,
        "confirm": rounds_s - confirmed,
        "after": run["ended_at"] - last - rounds_s,
    }
    seconds["in-trial"] = in_trials - seconds["measured"] - seconds["untimed"] - seconds["load"] - seconds["wait"]
    wall = run["wall_s"]
    return {
        "model": run["model"],
        "profile": run["profile"],
        "command": run["command"],
        "wall_s": wall,
        "trials": len(timed),
        "load_1min_before": run["load_1min_before"],
        "load_1min_after": run["load_1min_after"],
        "seconds": {p: seconds[p] for p in PARTS},
        "share": {p: seconds[p] / wall for p in PARTS},
        "overhead_share": 1.0 - (seconds["measured"] + seconds["confirmed"]) / wall,
        "overhead_share_trials_only": 1.0 - seconds["measured"] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=[], help="MODEL:PROFILE to run now")
    parser.add_argument(
        "--from",
        dest="from_",
        type=Path,
        action="append",
        default=[],
        help="a bench_gain.py (or this script's) output whose saved runs to account for",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more kvopt overrides for --case runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "overhead.json")
    args = parser.parse_args()
    if not args.case and not args.from_:
        parser.error("give at least one --case MODEL:PROFILE or --from FILE")
    runs = []
    for case in args.case:
        model, sep, profile = case.partition(":")
        if not sep or not model or not profile:
            raise ConfigError([f"--case: got {case!r}; allowed: MODEL:PROFILE, e.g. tiny-gpt2:ci-micro"])
        runs.append(
            run_study(model, profile, args.extra, log_dir=args.out.parent / "runs", name=f"overhead_{model}-{profile}")
        )
    for path in args.from_:
        if not path.is_file():
            raise ConfigError([f"--from: got {str(path)!r}, which is not a file; allowed: a bench_gain.py output"])
        saved = json.loads(path.read_text())
        # A bench_gain.py output keeps each case's run; an output of this script keeps its runs.
        runs.extend(saved["runs"] if "runs" in saved else [case["run"] for case in saved["cases"]])
    report = {**provenance(), "from": [str(p) for p in args.from_], "cases": [breakdown(r) for r in runs], "runs": runs}
    print(
        "| model | profile | wall s | trials | overhead | overhead (confirmation as overhead) | "
        + " | ".join(PARTS)
        + " |"
    )
    print("|---|---|---|---|---|---|" + "---|" * len(PARTS))
    for c in report["cases"]:
        parts = " | ".join(f"{c['share'][p]:.1%}" for p in PARTS)
        print(
            f"| {c['model']} | {c['profile']} | {c['wall_s']:.1f} | {c['trials']} | {c['overhead_share']:.1%} | "
            f"{c['overhead_share_trials_only']:.1%} | {parts} |"
        )
    write_json(args.out, report)
    print(f"written: {args.out}")


if __name__ == "__main__":
    script_main(main)
