"""Conditional options: each reaches generate with the right arguments; bad ones are refused."""

from __future__ import annotations

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import transformers_engine
from kvopt.config import SearchSpaceConfig, validate
from kvopt.engines.transformers.candidate import Candidate, space_from_config
from kvopt.engines.transformers.generation import timed_generate
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.workload import Workload, make_inputs
from kvopt.errors import ConfigError
from kvopt.paths import conf_dir
from kvopt.runner import prepare

CPU = torch.device("cpu")


def test_quantized_and_static_options_become_generate_arguments():
    fp8 = Candidate("quantized", "sdpa", "float32", 1, quantized_backend="fp8")
    assert fp8.generate_kwargs() == {"cache_implementation": "quantized", "cache_config": {"backend": "fp8"}}
    quanto = Candidate("quantized", "sdpa", "float32", 1, quantized_backend="quanto", quantized_nbits=2)
    assert quanto.generate_kwargs()["cache_config"] == {"backend": "quanto", "nbits": 2}
    off = Candidate("static", "sdpa", "float32", 1, compile=False)
    assert off.generate_kwargs() == {"cache_implementation": "static", "disable_compile": True}
    on = Candidate("static", "sdpa", "float32", 1, compile=True).generate_kwargs()
    assert on["compile_config"]._compile_all_devices is True  # compile on CPU too
    assert fp8.label == "quantized-fp8/sdpa/float32/b1"
    assert quanto.label == "quantized-quanto-2bit/sdpa/float32/b1"


def test_options_are_sampled_only_for_the_cache_that_takes_them():
    cfg = SearchSpaceConfig(
        name="t",
        cache_implementation=("dynamic", "static", "quantized"),
        attn_implementation=("sdpa",),
        dtype=("float32",),
        batch_size=(1,),
        quantized_backends=("fp8", "quanto"),
        quantized_nbits=(2, 4),
        static_compile=(False, True),
    )
    space = space_from_config(cfg, Candidate("dynamic", "sdpa", "float32", 1), {})
    # dynamic 1 + static x2 compile + quantized (fp8 1 + quanto x2 nbits) = 6
    assert space.size == 6
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        cand = space.suggest(trial)
        seen.add(cand)
        assert set(trial.params) == set(cand.params())
        if cand.cache_implementation != "quantized":
            assert "quantized_backend" not in trial.params
        if cand.cache_implementation != "static":
            assert "static_compile" not in trial.params
        study.tell(trial, 0.0)
    assert len(seen) == 6


def test_fp8_quantized_cache_really_runs(tiny_llama):
    loaded, _ = ModelLoader(tiny_llama, WeightsSource("random", "t"), CPU, seed=0).get("float32", "sdpa")
    workload = Workload(prompt_tokens=300, new_tokens=4)
    inputs = make_inputs(workload, 2, 1024, 0, CPU)
    fp8_candidate = Candidate("quantized", "sdpa", "float32", 2, quantized_backend="fp8")
    fp8 = timed_generate(loaded.model, inputs, fp8_candidate, 4, CPU)
    assert type(fp8.cache).__name__ == "QuantizedCache"
    dyn = timed_generate(loaded.model, inputs, Candidate("dynamic", "sdpa", "float32", 2), 4, CPU)
    assert type(dyn.cache).__name__ == "DynamicCache"


def _cfg(*overrides):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return validate(compose(config_name="config", overrides=["model=tiny-gpt2", "profile=ci-micro", *overrides]))


def test_a_backend_that_is_not_installed_is_refused_up_front():
    cfg = _cfg(
        "search_space.cache_implementation=[dynamic,quantized]",
        "search_space.quantized.backends=[hqq]",
        "storage=memory",
    )
    with pytest.raises(ConfigError) as info:
        prepare(cfg)
    assert "search_space.quantized.backends: got 'hqq'" in str(info.value)
    assert "allowed here: auto, fp8" in str(info.value)


def test_conflicting_options_are_refused():
    with pytest.raises(ConfigError) as info:
        _cfg("search_space.cache_implementation=[dynamic]", "search_space.static.compile=[true]")
    assert "search_space.static.compile: got [True]" in str(info.value)
    with pytest.raises(ConfigError) as info:
        _cfg("search_space.quantized.backends=[int3]")
    assert "search_space.quantized.backends" in str(info.value)


@pytest.mark.slow
def test_the_full_space_keeps_what_runs_here():
    # Random weights: the quantized cache (lossy) stays only with allow_unverified (else dropped for quality).
    p = prepare(_cfg("search_space=full", "storage=memory", "quality.allow_unverified=true"))
    assert "quantized" in p.space.values("cache_implementation") and p.space.values("quantized_backend") == ["fp8"]
    assert p.space.values("static_compile") == [False, True]
    assert "cache_implementation=offloaded_static" in p.space.dropped
    assert "paged" in p.space.values("cache_implementation")  # continuous batching runs on CPU


def test_paged_cache_runs_continuous_batching_with_a_pool_sized_from_the_workload(tiny_llama):
    from kvopt.engines.transformers.paged import PAGE_SIZE, paged_pool
    from kvopt.engines.transformers.predict import predict_memory
    from kvopt.protocol import measure_candidate

    loaded, _ = ModelLoader(tiny_llama, WeightsSource("random", "t"), CPU, seed=0).get("float32", "sdpa")
    workload = Workload(prompt_tokens=40, new_tokens=6)
    paged = Candidate("paged", "sdpa", "float32", 3)
    pool = paged_pool(3, 40, 6)
    assert pool.num_blocks == 3 * -(-46 // PAGE_SIZE)  # whole pages of prompt + new tokens, per request
    config = pool.config()
    assert (config.num_blocks, config.max_batch_tokens, config.max_requests_per_batch) == (pool.num_blocks, 120, 3)
    m = measure_candidate(transformers_engine(tiny_llama), loaded, paged, workload, warmup=1, repetitions=3, seed=0)
    assert len(m.ttft_ms) == 3 and all(t > 0 for t in m.ttft_ms) and all(d > 0 for d in m.decode_tok_s)
    # KV bytes read from the pool tensor match the analytic size of its pages exactly.
    assert m.kv_cache_bytes == predict_memory(tiny_llama, paged, workload).kv_bytes
    # The CPU profiler cannot see the worker thread: the pool is added, and said so.
    assert m.memory.details["paged_pool_bytes"] == m.kv_cache_bytes
    assert m.memory.peak_bytes >= m.weights_bytes + m.kv_cache_bytes
    assert "paged pool" in m.memory.method
    # The model is left with the attention it was loaded with.
    assert loaded.model.config._attn_implementation == "sdpa"
