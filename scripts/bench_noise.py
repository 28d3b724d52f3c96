"""How reproducible are kvopt's reported numbers? The same candidate, separate runs.

For each model, the baseline candidate (dynamic cache, sdpa, float32, batch 1) is measured
in ``--runs`` separate processes, with a fixed 3 repetitions and with adaptive
repetitions. The spread of the reported medians across runs (coefficient of variation)
is the noise a user sees between two kvopt runs. A third mode, ``paired``, measures the
static-cache candidate against the baseline in 6 interleaved rounds per process (as the
confirmation stage does) and reports the spread of the confirmed ratio across processes.
Results go to benchmarks/noise.json and a markdown table on stdout.

    python scripts/bench_noise.py --models tiny-gpt2 gpt2 --runs 5
    python scripts/bench_noise.py --models gpt2 --runs 3 --device cuda --modes fixed adaptive --out noise.json \
        --override measure.max_seconds=8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from kvopt_bench.common import compose_config, script_main

REPO = Path(__file__).resolve().parent.parent
MODES = {"fixed": ["measure.adaptive=false"], "adaptive": ["measure.adaptive=true"]}


def worker(model: str, profile: str, overrides: list[str], device_spec: str = "cpu") -> dict:
    """One fresh process: load the model, measure the baseline candidate once."""
    from kvopt.engines.transformers.candidate import Candidate
    from kvopt.engines.transformers.loading import ModelLoader
    from kvopt.engines.transformers.source import resolve_config
    from kvopt.engines.transformers.workload import make_workload
    from kvopt.machine import resolve_device
    from kvopt.protocol import measure_candidate

    cfg, weights = resolve_config(compose_config(model, profile, overrides))
    device = resolve_device(device_spec)
    loader = ModelLoader(cfg.model, weights, device, cfg.seed)
    loaded, _ = loader.get("float32", "sdpa")
    from kvopt.engines.transformers.engine import TransformersEngine

    m = measure_candidate(
        TransformersEngine(cfg.model, weights, device, cfg.seed),
        loaded,
        Candidate("dynamic", "sdpa", "float32", 1),
        make_workload(cfg.profile, cfg.model),
        warmup=cfg.profile.warmup,
        repetitions=cfg.profile.repetitions,
        seed=cfg.seed,
        measure=cfg.measure,
    )
    ttft, tput, mem = m.values
    return {
        "ttft_ms": ttft,
        "decode_tok_s": tput,
        "peak_mem_mb": mem,
        "n": len(m.ttft_ms),
        "noisy": m.noisy,
        "stopped_because": m.stopped_because,
        # The samples behind the medians: their spread inside one process, against the
        # spread of the medians between processes, says where the variance comes from.
        "ttft_ms_raw": m.ttft_ms,
        "decode_tok_s_raw": m.decode_tok_s,
        "protocol": m.extra.get("protocol"),
    }


def within_process(runs: list[dict], metric: str) -> dict[str, float] | None:
    """The samples' CV inside each process (median over processes) and the CV a median of n such samples would have.

    For n samples of spread ``cv``, the median's standard error is about 1.2533 · cv / √n
    (large-n normal approximation). Medians spread much wider than that between processes
    means the variance is between processes (the machine's state when each ran), which more
    samples in one process cannot cut; paired rounds (ratios within a round) do.
    """
    raw = [r.get(f"{metric}_raw") for r in runs]
    if any(not values or len(values) < 2 for values in raw):
        return None
    cvs = [cv(values) for values in raw]  # type: ignore[arg-type]
    n = statistics.median(len(values) for values in raw)  # type: ignore[arg-type]
    within = statistics.median(cvs)
    return {"sample_cv": within, "median_cv_expected": 1.2533 * within / n**0.5}


def paired_worker(
    model: str, profile: str, rounds: int = 6, device_spec: str = "cpu", overrides: list[str] | None = None
) -> dict:
    """One fresh process: the static-cache candidate against the baseline, interleaved rounds.

    Reports the confirmed ratios (as kvopt's confirmation stage computes them): the spread
    of these across processes is what a user sees of kvopt's confirmed gains.
    """
    from kvopt.confirm import confirmed_gains
    from kvopt.engines.transformers.candidate import Candidate
    from kvopt.engines.transformers.generation import timed_generate
    from kvopt.engines.transformers.loading import ModelLoader
    from kvopt.engines.transformers.source import resolve_config
    from kvopt.engines.transformers.workload import make_inputs, make_workload
    from kvopt.machine import resolve_device

    cfg, weights = resolve_config(compose_config(model, profile, overrides or []))
    device = resolve_device(device_spec)
    model_obj = ModelLoader(cfg.model, weights, device, cfg.seed).get("float32", "sdpa")[0].model
    workload = make_workload(cfg.profile, cfg.model)
    inputs = make_inputs(workload, 1, model_obj.config.vocab_size, cfg.seed, device)
    pair = {"base": Candidate("dynamic", "sdpa", "float32", 1), "static": Candidate("static", "sdpa", "float32", 1)}
    samples: dict[str, dict[str, list[float]]] = {k: {"ttft_ms": [], "decode_tok_s": []} for k in pair}
    for name in pair:  # warm both
        timed_generate(model_obj, inputs, pair[name], workload.new_tokens, device)
    for r in range(rounds):
        for name in list(pair) if r % 2 == 0 else list(pair)[::-1]:
            run = timed_generate(model_obj, inputs, pair[name], workload.new_tokens, device)
            for metric, value in run.metrics(pair[name].batch_size).items():
                samples[name][metric].append(value)
    gains = confirmed_gains(samples["static"], samples["base"], memory_ratio=1.0)
    return {
        # Ratios static/baseline, comparable across runs whatever each process's speed.
        "ttft_ms": 1.0 - gains["ttft_ms"].pct / 100.0,
        "decode_tok_s": 1.0 + gains["decode_tok_s"].pct / 100.0,
        "peak_mem_mb": 1.0,
        "n": rounds,
        "noisy": False,
        "stopped_because": "paired rounds",
    }


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-gpt2", "gpt2"])
    parser.add_argument("--profile", default="chat-agent")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "noise.json")
    # Where the workers measure: cpu (the default, as every stored figure was taken), cuda, cuda:N.
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", choices=[*MODES, "paired"], default=[*MODES, "paired"])
    # Config overrides for every worker, e.g. a smaller measure.max_seconds for a short budget.
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "PROFILE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs: got {args.runs}; allowed: an integer >= 1")
    if args.worker:
        model, profile, mode = args.worker
        result = (
            paired_worker(model, profile, device_spec=args.device, overrides=args.override)
            if mode == "paired"
            else worker(model, profile, [*MODES[mode], *args.override], args.device)
        )
        print(json.dumps(result))
        return

    from kvopt.machine import machine_info, resolve_device

    device = resolve_device(args.device)  # a device that is not here: one message, exit 2 (script_main)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "profile": args.profile,
        "runs": args.runs,
        "device": str(device),
        "overrides": args.override,
        "cases": [],
    }
    print("| model | repetitions | runs | CV TTFT | CV decode tok/s | CV memory | median n | noisy runs |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        modes = list(args.modes)
        by_mode: dict[str, list[dict]] = {mode: [] for mode in modes}
        # Modes alternate run by run, so slow drift of the machine hits all alike.
        for _ in range(args.runs):
            for mode in modes:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        model,
                        args.profile,
                        mode,
                        "--device",
                        args.device,
                        *(f"--override={o}" for o in args.override),
                    ],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                )
                if proc.returncode != 0:  # say why the worker failed, not just that it did
                    print(
                        f"worker {model}/{mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
                        file=sys.stderr,
                    )
                    raise SystemExit(1)
                by_mode[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        for mode, runs in by_mode.items():
            row = {m: cv([r[m] for r in runs]) for m in ("ttft_ms", "decode_tok_s", "peak_mem_mb")}
            within = {m: within_process(runs, m) for m in ("ttft_ms", "decode_tok_s")}
            report["cases"].append({"model": model, "mode": mode, "runs": runs, "cv": row, "within_process": within})
            print(
                f"| {model} | {mode} | {len(runs)} | {row['ttft_ms']:.1%} | {row['decode_tok_s']:.1%} | "
                f"{row['peak_mem_mb']:.1%} | {statistics.median(r['n'] for r in runs):g} | "
                f"{sum(r['noisy'] for r in runs)} |"
            )
            for metric, w in within.items():
                if w is not None:
                    print(
                        f"  {metric}: samples' CV inside a process {w['sample_cv']:.1%}, so a median of them "
                        f"~{w['median_cv_expected']:.1%}; between processes {row[metric]:.1%}"
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    script_main(main)
