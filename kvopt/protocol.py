"""The measurement protocol of one trial: warm-up, repetitions, memory, statistics.

Every repetition is one greedy ``generate`` of exactly ``new_tokens`` tokens on the same
synthetic prompts. TTFT is the time from the call to the first logits (prefill);
decode throughput is ``batch × (new_tokens − 1)`` over the time after the first token.
The first warm-up run also reads memory (the profiler it needs would perturb a timed run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from kvopt.engine.generation import timed_generate
from kvopt.engine.loading import LoadedModel
from kvopt.engine.workload import Workload, make_inputs
from kvopt.measure.memory import MB, MemoryReading, cache_bytes, measure_peak, storage_bytes, weights_bytes
from kvopt.measure.stats import summarize
from kvopt.space import Candidate

__all__ = ["Measurement", "measure_candidate"]


@dataclass
class Measurement:
    candidate: Candidate
    ttft_ms: list[float]
    decode_tok_s: list[float]
    memory: MemoryReading
    weights_bytes: int
    kv_cache_bytes: int
    warmup_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> tuple[float, float, float]:
        """The study's objectives: median TTFT, median decode tok/s, peak memory MB."""
        return (
            summarize(self.ttft_ms)["median"],
            summarize(self.decode_tok_s)["median"],
            self.memory.peak_bytes / MB,
        )

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready user attrs: raw repetitions, statistics and memory breakdown."""
        return {
            "ttft_ms_raw": [round(v, 4) for v in self.ttft_ms],
            "decode_tok_s_raw": [round(v, 4) for v in self.decode_tok_s],
            "ttft_ms_stats": summarize(self.ttft_ms),
            "decode_tok_s_stats": summarize(self.decode_tok_s),
            "peak_mem_method": self.memory.method,
            "peak_mem_details": self.memory.details,
            "weights_mb": self.weights_bytes / MB,
            "kv_cache_mb": self.kv_cache_bytes / MB,
            "kv_cache_bytes": self.kv_cache_bytes,
            "warmup_s": self.warmup_s,
            **self.extra,
        }


def measure_candidate(
    loaded: LoadedModel,
    candidate: Candidate,
    workload: Workload,
    device: torch.device,
    *,
    warmup: int,
    repetitions: int,
    seed: int,
) -> Measurement:
    model = loaded.model
    inputs = make_inputs(workload, candidate.batch_size, model.config.vocab_size, seed, device)
    weights = weights_bytes(model)
    resident = weights + storage_bytes(inputs.values())

    def run() -> Any:
        return timed_generate(model, inputs, candidate, workload.new_tokens, device)

    start = time.perf_counter()
    first, memory = measure_peak(run, device, resident)
    kv_bytes = cache_bytes(first.cache)
    del first  # free the cache before the timed runs
    for _ in range(warmup - 1):
        run()
    warmup_s = time.perf_counter() - start

    ttft_ms: list[float] = []
    decode_tok_s: list[float] = []
    for _ in range(repetitions):
        result = run()
        ttft_ms.append(result.ttft_s * 1000.0)
        decode_tok_s.append(candidate.batch_size * (result.new_tokens - 1) / result.decode_s)
        del result
    return Measurement(
        candidate=candidate,
        ttft_ms=ttft_ms,
        decode_tok_s=decode_tok_s,
        memory=memory,
        weights_bytes=weights,
        kv_cache_bytes=kv_bytes,
        warmup_s=warmup_s,
    )
