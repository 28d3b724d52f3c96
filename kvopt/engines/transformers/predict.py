"""An analytical memory model: what a candidate will need, before anything is loaded.

    predicted = weights + KV cache + activations

- weights: the parameter count (from the architecture on the meta device, no memory
  used) times the dtype's bytes;
- KV cache: ``2 × layers × kv_heads × head_dim × tokens × batch × bytes`` for the
  dynamic and static caches (tokens = prompt + new − 1, the last token is never fed
  back); the quantized cache keeps ``residual_length`` tokens at full precision and the
  rest at ``nbits``; offloaded caches keep about two layers on the device;
- activations: the prefill's transient tensors, ``batch × prompt × (8 × hidden +
  2 × intermediate)`` elements, plus the attention score matrices ``batch × heads ×
  prompt²`` (twice: scores and probabilities) with eager attention, plus float32 logits
  for the last position.

Its purpose is to prune candidates that cannot fit before spending a load on them.
Every completed trial stores predicted beside measured memory
(``predicted_mem_error_pct``); docs/search.md reports the error seen (within ±10% on
gpt2 at a 992-token prompt, batch 1 to 8, eager and sdpa).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from kvopt.config import ModelConfig
from kvopt.engines.transformers.candidate import PAGE_SIZE, Candidate
from kvopt.predict import MemoryPrediction
from kvopt.workload import Workload

__all__ = [
    "MemoryPrediction",
    "ModelShape",
    "model_shape",
    "shape_of_config",
    "predict_memory",
    "memory_prior",
    "activation_bytes",
    "QUANTIZED_RESIDUAL",
]

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Transformers' quantized cache keeps this many recent tokens unquantized.
QUANTIZED_RESIDUAL = 128


@dataclass(frozen=True)
class ModelShape:
    """The sizes the memory model needs, read from the architecture (parameter count from the meta device)."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def model_shape(model_cfg: ModelConfig) -> ModelShape:
    """Sizes that drive memory, read from the architecture (cached per architecture)."""
    return _shape_of(json.dumps(model_cfg.architecture, sort_keys=True))


@lru_cache(maxsize=16)
def _shape_of(architecture_json: str) -> ModelShape:
    fields = json.loads(architecture_json)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = AutoModelForCausalLM.from_config(config)
    return shape_of_config(config, sum(p.numel() for p in model.parameters()))


def shape_of_config(config: PretrainedConfig, parameters: int) -> ModelShape:
    """The sizes that drive memory, from a Transformers config (of a loaded model, too)."""
    text = config.get_text_config(decoder=True)
    heads = int(text.num_attention_heads)
    hidden = int(text.hidden_size)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    return ModelShape(
        parameters=parameters,
        layers=int(text.num_hidden_layers),
        hidden=hidden,
        intermediate=int(intermediate),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        vocab=int(text.vocab_size),
    )


def predict_memory(model_cfg: ModelConfig, candidate: Candidate, workload: Workload) -> MemoryPrediction:
    """What ``candidate`` will need on the workload, before anything is loaded (see the module docstring).

    Args:
        model_cfg: the model; its architecture gives the shape.
        candidate: the settings (cache, dtype, batch size, attention).
        workload: prompt and new tokens of one call.
    """
    shape = model_shape(model_cfg)
    size = _BYTES[candidate.dtype]
    batch, prompt = candidate.batch_size, workload.prompt_tokens
    tokens = prompt + workload.new_tokens - 1
    per_token_layer = 2 * shape.kv_heads * shape.head_dim * batch  # elements, K and V
    cache = candidate.cache_implementation
    if cache == "quantized":
        full = min(tokens, QUANTIZED_RESIDUAL)
        quantized = max(0, tokens - QUANTIZED_RESIDUAL)
        nbits = candidate.quantized_nbits or 4
        kv = shape.layers * per_token_layer * (full * size + quantized * nbits / 8)
    elif cache == "paged":
        # The pool is whole pages of prompt + new tokens per request (kvopt.engines.transformers.paged),
        # plus the two never-allocated "trash" sectors Transformers puts in front (a
        # sector is one block whenever a block's bytes are a multiple of 128).
        blocks = batch * -(-(prompt + workload.new_tokens) // PAGE_SIZE) + 2
        kv = shape.layers * 2 * shape.kv_heads * shape.head_dim * blocks * PAGE_SIZE * size
    else:
        layers_on_device = min(2, shape.layers) if cache.startswith("offloaded") else shape.layers
        kv = layers_on_device * per_token_layer * tokens * size
    prefilled = prompt
    if candidate.prefix_reuse:
        # The kept prefix cache (one row) stays resident; each call prefills only the rest.
        kv += shape.layers * 2 * shape.kv_heads * shape.head_dim * workload.shared_prefix_tokens * size
        prefilled = prompt - workload.shared_prefix_tokens
    return MemoryPrediction(
        weights_bytes=shape.parameters * size,
        kv_bytes=int(kv),
        activation_bytes=activation_bytes(shape, candidate, prefilled, key_tokens=prompt),
    )


def activation_bytes(shape: ModelShape, candidate: Candidate, prompt_tokens: int, key_tokens: int | None = None) -> int:
    """The prefill's transient tensors: the largest memory above weights and cache.

    ``prompt_tokens``: the tokens the prefill computes; ``key_tokens``: those it attends to
    (more when a reused prefix is already cached; default: the same).
    """
    size = _BYTES[candidate.dtype]
    batch = candidate.batch_size
    keys = prompt_tokens if key_tokens is None else key_tokens
    activations = batch * prompt_tokens * (8 * shape.hidden + 2 * shape.intermediate) * size
    if candidate.attn_implementation == "eager":
        activations += 2 * batch * shape.heads * prompt_tokens * keys * size
    activations += 2 * batch * shape.vocab * 4  # last-position logits, upcast to float32
    return int(activations)


def memory_prior(model_cfg: ModelConfig, workload: Workload) -> Callable[[Candidate], float]:
    """The analytic peak (MB) of each candidate, memoised: the performance model's memory prior."""
    cache: dict[Candidate, float] = {}

    def predicted_mb(candidate: Candidate) -> float:
        if candidate not in cache:
            cache[candidate] = predict_memory(model_cfg, candidate, workload).total_mb
        return cache[candidate]

    return predicted_mb
