"""Shared-prefix reuse: the KV cache of the prompt prefix every request shares, filled once.

A system prompt that starts every request need not be prefilled again for each one: its
keys and values are the same every time. Transformers can start ``generate`` from a cache
that already holds them (the prompt's remaining tokens are then the only ones prefilled),
but ``generate`` appends to the cache it is given, so each call needs its own copy.

What kvopt measures for a ``prefix_reuse`` candidate:

- **setup (not timed):** one forward pass of the prefix, batch 1, into a ``DynamicCache``
  — what a server does once per system prompt. Its seconds are recorded apart.
- **each call (timed, inside TTFT):** a copy of that cache repeated to the batch, then
  ``generate`` on the whole prompt, which prefills only the tokens after the prefix.
- **memory:** the kept prefix cache is resident; the call's own copy grows like any
  dynamic cache and is counted in the call's peak.

Only the dynamic cache takes a prefilled cache here: Transformers builds static, offloaded
and quantized caches itself from ``cache_implementation`` and refuses both at once.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationMixin, PreTrainedModel

from kvopt.engines.transformers.candidate import Candidate
from kvopt.measure.memory import MB, cache_bytes
from kvopt.measure.timing import synchronize
from kvopt.workload import Workload

__all__ = ["PrefixCache", "prefill_prefix", "prepare_prefix", "cache_argument", "generate_cache_keyword"]


def cache_argument(model: PreTrainedModel) -> str:
    """The keyword that passes a cache to this model: ``cache`` (Transformers >= 5.2x) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def generate_cache_keyword() -> str:
    """The keyword the installed Transformers passes a cache by, with no model at hand (a snippet to paste).

    ``cache`` where Transformers renamed ``past_key_values`` (5.25 for generate; the old name
    then warns and goes away in 6.0), else ``past_key_values``.
    """
    # Read from GenerationMixin.prepare_inputs_for_generation, where generate hands the cache on
    # to every model: generate's own signature hides the rename (a decorator, **kwargs); a
    # version number misses dev builds and backports; a model class is not known without its config.
    method = getattr(GenerationMixin, "prepare_inputs_for_generation", None)
    if method is not None and "cache" in inspect.signature(method).parameters:
        return "cache"
    return "past_key_values"


@dataclass
class PrefixCache:
    """The shared prefix's keys and values for one request, and what filling them cost."""

    cache: DynamicCache
    tokens: int
    prefill_s: float

    @property
    def nbytes(self) -> int:
        """Bytes the kept prefix cache holds (resident for as long as the prefix is reused)."""
        return cache_bytes(self.cache)

    def as_attrs(self) -> dict[str, float | int]:
        """For the trial's attrs: the prefix's length, its kept cache and its one-off prefill."""
        return {
            "prefix_tokens": self.tokens,
            "prefix_cache_mb": self.nbytes / MB,
            "prefix_prefill_s": self.prefill_s,
        }

    def for_batch(self, batch_size: int) -> DynamicCache:
        """A fresh copy for one ``generate`` call, one row per request (generate appends to it)."""
        fresh = copy.deepcopy(self.cache)
        if batch_size > 1:
            fresh.batch_repeat_interleave(batch_size)
        return fresh


@torch.inference_mode()
def prefill_prefix(model: PreTrainedModel, input_ids: torch.Tensor, tokens: int, device: torch.device) -> PrefixCache:
    """Fill a cache with the first ``tokens`` of ``input_ids``'s first row (every row shares them).

    Raises ValueError when ``tokens`` leaves no prompt token after the prefix: ``generate``
    needs at least one token to prefill.
    """
    if not 0 < tokens < input_ids.shape[1]:
        raise ValueError(
            f"a shared prefix of {tokens} tokens needs a prompt longer than it (got {input_ids.shape[1]} tokens)"
        )
    cache = DynamicCache(config=model.config)
    synchronize(device)
    start = time.perf_counter()
    model(input_ids=input_ids[:1, :tokens], use_cache=True, **{cache_argument(model): cache})
    synchronize(device)
    return PrefixCache(cache=cache, tokens=tokens, prefill_s=time.perf_counter() - start)


def prepare_prefix(
    model: PreTrainedModel,
    candidate: Candidate,
    workload: Workload,
    inputs: dict[str, torch.Tensor],
    device: torch.device,
) -> PrefixCache | None:
    """The filled prefix cache a ``prefix_reuse`` candidate starts each call from; None for any other."""
    if not candidate.prefix_reuse:
        return None
    return prefill_prefix(model, inputs["input_ids"], workload.shared_prefix_tokens, device)
