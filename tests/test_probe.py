"""The capability probe drops what cannot run here, with a reason, before the study."""

from __future__ import annotations

import torch

from kvopt.config import SearchSpaceConfig
from kvopt.engines.transformers.candidate import Candidate, space_from_config
from kvopt.engines.transformers.probe import default_attn_implementation, probe

CPU = torch.device("cpu")


def test_probe_on_cpu_drops_cuda_only_and_unsupported_choices(tiny_gpt2):
    baseline = Candidate("dynamic", default_attn_implementation(tiny_gpt2, CPU), "float32", 1)
    choices = {
        "cache_implementation": ["dynamic", "static", "offloaded"],
        "attn_implementation": ["eager", "sdpa", "flex_attention", "flash_attention_2"],
        "dtype": ["float32", "bfloat16"],
    }
    result = probe(tiny_gpt2, CPU, choices, baseline)
    assert "CUDA" in result.unavailable["cache_implementation=offloaded"]
    assert "flash_attention_2" in result.unavailable["attn_implementation=flash_attention_2"]
    # GPT-2 has no flex attention: found by really trying it.
    assert "flex_attention" in result.unavailable["attn_implementation=flex_attention"]
    for key in ("cache_implementation=static", "attn_implementation=eager", "dtype=bfloat16"):
        assert key in result.available


def test_default_attention_is_what_transformers_picks(tiny_llama):
    assert default_attn_implementation(tiny_llama, CPU) == "sdpa"


def test_space_keeps_the_baseline_values_and_drops_the_rest():
    cfg = SearchSpaceConfig(
        name="t",
        cache_implementation=("static", "offloaded"),
        attn_implementation=("eager",),
        dtype=("bfloat16",),
        batch_size=(4, 2),
    )
    baseline = Candidate("dynamic", "sdpa", "float32", 1)
    space = space_from_config(cfg, baseline, {"cache_implementation=offloaded": "needs CUDA"})
    assert space.values("cache_implementation") == ["dynamic", "static"]
    assert space.values("attn_implementation") == ["sdpa", "eager"]
    assert space.values("dtype") == ["float32", "bfloat16"]
    assert space.values("batch_size") == [1, 2, 4]
    assert space.size == 2 * 2 * 2 * 3
