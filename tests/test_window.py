"""The split protocol: TTFT from prefill-only calls, decode throughput from a decode window."""

from __future__ import annotations

import statistics

import pytest
import torch

from conftest import model_config, transformers_engine
from kvopt.config import MeasureConfig
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.generation import timed_generate
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.workload import Workload, make_inputs
from kvopt.protocol import full_length_reason, measure_candidate
from kvopt.workload import placement

CPU = torch.device("cpu")
SHAPE = Workload(64, 40)
DYNAMIC = Candidate("dynamic", "sdpa", "float32", 2)
STATIC = Candidate("static", "sdpa", "float32", 2, compile=False)
ENGINE = transformers_engine()
WINDOW = MeasureConfig(decode_window=8, max_seconds=5.0, max_repetitions=8)


@pytest.fixture(scope="module")
def loaded():
    return ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), CPU, 0).get("float32", "sdpa")[0]


@pytest.mark.parametrize(("prompt", "new", "window"), [(64, 40, 8), (768, 256, 16), (32, 8, 16), (10, 3, 16)])
def test_the_window_sits_at_the_full_calls_mean_context_inside_its_length(prompt, new, window):
    where = placement(prompt, new, window)
    assert where.steps == min(window, new - 1)
    # The full call's decode steps attend over prompt + 1 … prompt + new − 1 positions: mean prompt + new / 2.
    assert abs(where.mean_context() - (prompt + new / 2)) <= 1.0
    # Its last step stays inside the full call (a static cache sized for it holds the window).
    assert where.context_tokens + where.steps <= prompt + new - 2
    assert where.context_tokens >= 1


def test_a_window_needs_a_decode_step():
    with pytest.raises(ValueError, match="new_tokens >= 2"):
        placement(8, 1, 4)


@pytest.mark.parametrize("candidate", [DYNAMIC, STATIC], ids=lambda c: c.label)
def test_the_window_decodes_from_a_copy_and_agrees_with_a_full_length_call(loaded, candidate):
    """Per-step rate of the window vs a whole call's decode rate, medians of five each (tiny model)."""
    model = loaded.model
    where = placement(SHAPE.prompt_tokens, SHAPE.new_tokens, 8)
    window = ENGINE.session(loaded, candidate, SHAPE, 0).window(where)  # its cache sized for 64 + 40 tokens
    assert window.cache.get_seq_length() == where.context_tokens
    inputs = make_inputs(SHAPE, 2, model.config.vocab_size, 0, CPU)
    timed_generate(model, inputs, candidate, SHAPE.new_tokens, CPU)  # warm
    window.timed()
    windowed, whole = [], []
    for _ in range(5):
        steps = window.timed()
        assert len(steps) == where.steps and all(s > 0 for s in steps)
        windowed.append(window.metrics(steps)["decode_tok_s"])
        whole.append(timed_generate(model, inputs, candidate, SHAPE.new_tokens, CPU).metrics(2)["decode_tok_s"])
    # The kept cache is never changed by a window: each starts from the same context.
    assert window.cache.get_seq_length() == where.context_tokens
    ratio = statistics.median(windowed) / statistics.median(whole)
    # Same steps, same context on average: the tiny model's per-call overhead (generate's
    # set-up, ~0.3 ms) is the only difference; a wrong placement or a cache rebuilt each
    # step would move it by far more.
    assert 0.7 < ratio < 1.45, (windowed, whole)


def test_which_candidates_are_timed_whole_and_why():
    assert full_length_reason(ENGINE, DYNAMIC, SHAPE, WINDOW) is None
    assert full_length_reason(ENGINE, STATIC, SHAPE, WINDOW) is None
    assert (
        full_length_reason(ENGINE, Candidate("dynamic", "sdpa", "float32", 1, prefix_reuse=True), SHAPE, WINDOW) is None
    )
    reasons = {
        "paged": Candidate("paged", "sdpa", "float32", 1),
        "compile": Candidate("static", "sdpa", "float32", 1, compile=True),
        "re-quantized": Candidate("quantized", "sdpa", "float32", 1, quantized_backend="fp8"),
        "prefetched": Candidate("offloaded", "sdpa", "float32", 1),
    }
    for word, candidate in reasons.items():
        assert word in str(full_length_reason(ENGINE, candidate, SHAPE, WINDOW))
    assert "decode_window=0" in str(full_length_reason(ENGINE, DYNAMIC, SHAPE, MeasureConfig(decode_window=0)))
    # A short call (fewer than twice the window's steps) is cheaper timed whole.
    assert "new tokens" in str(full_length_reason(ENGINE, DYNAMIC, Workload(64, 16), WINDOW))
    assert full_length_reason(ENGINE, DYNAMIC, SHAPE, None) is not None


def test_a_split_trial_times_prefill_and_window_apart_and_reads_memory_at_full_length(loaded):
    split = measure_candidate(ENGINE, loaded, DYNAMIC, SHAPE, warmup=1, repetitions=6, seed=0, measure=WINDOW)
    whole = measure_candidate(
        ENGINE, loaded, DYNAMIC, SHAPE, warmup=1, repetitions=6, seed=0, measure=MeasureConfig(decode_window=0)
    )
    attrs = split.to_attrs()
    assert attrs["protocol"] == "split" and attrs["decode_window_steps"] == 8
    assert whole.to_attrs()["protocol"] == "full-length"
    assert len(split.ttft_ms) == len(split.decode_tok_s) >= 6
    # Peak memory and the KV cache come from the full-length first call: the same as a whole-call trial.
    assert split.memory.peak_bytes == whole.memory.peak_bytes
    assert split.kv_cache_bytes == whole.kv_cache_bytes
    # A prefill-only TTFT is the same prefill as a whole call's.
    assert 0.5 < statistics.median(split.ttft_ms) / statistics.median(whole.ttft_ms) < 2.0
