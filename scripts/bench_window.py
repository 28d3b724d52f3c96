"""Does the decode window stand for the whole call? Window vs full-length, per model and shape.

For each model and each distinct shape the shipped profiles give it (after clamping), and
for each candidate, the decode throughput of the split protocol's window
(:mod:`kvopt.engines.transformers.window`, placed at the full call's mean context) is measured against
whole ``generate`` calls, interleaved (window, whole, window, whole, …) after one warm-up of
each. Reported: the median of each and their ratio (window / full − 1, in %), and the
seconds one sample of each costs. Results go to benchmarks/window.json and a markdown table.

    python scripts/bench_window.py --models tiny-gpt2 tiny-llama gpt2 --samples 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from kvopt_bench.common import compose_config, load_average, script_main

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("chat-agent", "rag", "longform")
CANDIDATES = ("dynamic/sdpa/b1", "static/sdpa/b1", "dynamic/sdpa/b4")


def _candidate(spec: str):  # type: ignore[no-untyped-def]
    from kvopt.engines.transformers.candidate import Candidate

    cache, attn, batch = spec.split("/")
    return Candidate(cache, attn, "float32", int(batch[1:]), compile=False if cache == "static" else None)


def measure_shape(loaded, candidate, shape, samples: int, window: int) -> dict:  # type: ignore[no-untyped-def]
    import torch

    from kvopt.engines.transformers.engine import TransformersSession
    from kvopt.engines.transformers.generation import timed_generate
    from kvopt.engines.transformers.workload import make_inputs
    from kvopt.workload import placement

    cpu = torch.device("cpu")
    model = loaded.model
    vocab = model.config.vocab_size
    inputs = make_inputs(shape, candidate.batch_size, vocab, 0, cpu)
    where = placement(shape.prompt_tokens, shape.new_tokens, window)
    win = TransformersSession(model, candidate, shape, 0, cpu).window(where)
    timed_generate(model, inputs, candidate, shape.new_tokens, cpu)  # warm-up of each
    win.timed()
    windowed, whole, window_s, whole_s = [], [], [], []
    for _ in range(samples):
        start = time.perf_counter()
        windowed.append(win.metrics(win.timed())["decode_tok_s"])
        window_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        whole.append(
            timed_generate(model, inputs, candidate, shape.new_tokens, cpu).metrics(candidate.batch_size)[
                "decode_tok_s"
            ]
        )
        whole_s.append(time.perf_counter() - start)
    w, f = statistics.median(windowed), statistics.median(whole)
    return {
        "shape": shape.label,
        "candidate": candidate.label,
        "window_context": where.context_tokens,
        "window_steps": where.steps,
        "window_tok_s": windowed,
        "full_tok_s": whole,
        "deviation_pct": (w / f - 1.0) * 100.0,
        "window_sample_s": statistics.median(window_s),
        "full_sample_s": statistics.median(whole_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-gpt2", "tiny-llama", "gpt2"])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), help="cache/attn/bN, float32")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "window.json")
    args = parser.parse_args()

    import torch

    from kvopt.engines.transformers.loading import ModelLoader
    from kvopt.engines.transformers.source import resolve_config
    from kvopt.machine import machine_info
    from kvopt.workload import make_mix

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "samples": args.samples,
        "window": args.window,
        "load_1min_before": load_average(),
        "cases": [],
    }
    print("| model | shape | candidate | window tok/s | full tok/s | window − full | s per sample (window / full) |")
    print("|---|---|---|---|---|---|---|")
    for model_name in args.models:
        shapes = {}
        for profile in args.profiles:
            cfg, weights = resolve_config(compose_config(model_name, profile, []))
            for shape in make_mix(cfg.profile, cfg.model).shapes:
                if shape.new_tokens - 1 >= 2 * args.window:  # where the split protocol is used
                    shapes.setdefault((shape.prompt_tokens, shape.new_tokens), shape)
        loader = ModelLoader(cfg.model, weights, torch.device("cpu"), 0)
        loaded = loader.get("float32", "sdpa")[0]
        for spec in args.candidates:
            candidate = _candidate(spec)
            for shape in shapes.values():
                row = measure_shape(loaded, candidate, shape, args.samples, args.window)
                report["cases"].append({"model": model_name, **row})
                print(
                    f"| {model_name} | {row['shape']} | {row['candidate']} | "
                    f"{statistics.median(row['window_tok_s']):.1f} | {statistics.median(row['full_tok_s']):.1f} | "
                    f"{row['deviation_pct']:+.1f}% | {row['window_sample_s']:.2f} / {row['full_sample_s']:.2f} |",
                    flush=True,
                )
        loader.release()
    report["load_1min_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    script_main(main)
