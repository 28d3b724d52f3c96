"""The fidelity of each cache and dtype on the tiny trained model: the table in docs/quality.md.

Runs kvopt's own fidelity measurement (kvopt.engines.transformers.fidelity) for each candidate against
the baseline (dynamic cache, sdpa, float32) on the shipped text, at two prompt lengths,
and prints a markdown table. CPU, a minute at most.

    python scripts/bench_quality.py [--model tests/data/tiny-shakespeare]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from kvopt.config import ModelConfig, QualityConfig
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.fidelity import TransformersFidelityMeter as FidelityMeter
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.engines.transformers.source import resolve_model
from kvopt.quality import classify, violations

REPO = Path(__file__).resolve().parent.parent
BASELINE = Candidate("dynamic", "sdpa", "float32", 1)
CANDIDATES = [
    BASELINE,
    Candidate("dynamic", "eager", "float32", 1),
    Candidate("static", "sdpa", "float32", 1),
    Candidate("quantized", "sdpa", "float32", 1, quantized_backend="fp8"),
    Candidate("dynamic", "sdpa", "bfloat16", 1),
    Candidate("dynamic", "sdpa", "float16", 1),
    Candidate("quantized", "sdpa", "bfloat16", 1, quantized_backend="fp8"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "tests" / "data" / "tiny-shakespeare"))
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "tiny-gpt2.yaml"))
    model_cfg = ModelConfig(**{**data, "hub_id": args.model, "weights": "pretrained"})  # type: ignore[arg-type]
    source = resolve_model(model_cfg)  # the folder's own config.json and weights
    loader = ModelLoader(source.model, source.weights, torch.device("cpu"), 0)
    cfg = QualityConfig(new_tokens=args.new_tokens)
    print(
        "| candidate | kind | prompt | agreement | first divergence | top-5 (base in cand / cand in base) "
        "| mean KL | p99 KL | verdict (defaults) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for prompt_tokens in (32, 128):
        meter = FidelityMeter(loader, BASELINE, cfg, prompt_tokens, args.new_tokens)
        for candidate in CANDIDATES:
            f = meter.measure(candidate)
            kind = classify(candidate, BASELINE)[0]
            top = (
                "-"
                if f.first_divergence is None
                else f"{f.baseline_in_candidate_top5} / {f.candidate_in_baseline_top5}"
            )
            verdict = "; ".join(violations(f, cfg)) or "within"
            print(
                f"| {candidate.label} | {kind} | {prompt_tokens} | {f.token_agreement:.3f} | "
                f"{'-' if f.first_divergence is None else f.first_divergence} | {top} | {f.mean_kl:.2g} | "
                f"{f.p99_kl:.2g} | {verdict} |"
            )
    print(f"\n{dataclasses.asdict(cfg)}")


if __name__ == "__main__":
    main()
