"""The ``paged`` cache: continuous batching through ``generate_batch``, timed like ``generate``.

Paged attention is not a ``generate(cache_implementation=...)`` option in Transformers 5:
it lives in the continuous-batching manager, which owns a pool of fixed-size pages and
runs the model in a background thread. kvopt measures it the way a batch user calls it:
one ``generate_batch`` per batch of prompts, all submitted at once.

- **Pool sized from the workload** (:class:`kvopt.space.PagedPool`), never from free memory:
  left alone, Transformers sizes the pool from a share of what the device has free (on a CPU that is most of the RAM,
  allocated and zeroed on every call). kvopt gives it exactly the pages the batch needs.
- **TTFT** is submission to the moment the *last* request of the batch has its first
  token (a batched ``generate`` gives every prompt its first token at once, so the two
  are comparable); **decode** is from then to the last token of the batch.
- One pool per call (the manager is not kept between calls), like a dynamic or static
  cache made by each ``generate``: its allocation is inside the measured call, so the
  memory probe sees it. A server that keeps the manager alive pays that once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

# The pool's size is knowledge about the candidate (its generate kwargs carry it): defined
# in kvopt.space, named here too for code that runs paged generation.
from kvopt.engines.transformers.candidate import PAGE_SIZE, PagedPool, paged_pool
from kvopt.measure.memory import storage_bytes

__all__ = ["PAGE_SIZE", "PagedPool", "paged_pool", "paged_generate", "PagedRun"]

# The continuous-batching manager logs every start and stop at INFO on its own logger,
# outside transformers' verbosity setting: keep kvopt's terminal for kvopt's lines.
logging.getLogger("ContinuousBatchingLogger").setLevel(logging.WARNING)


@dataclass
class PagedRun:
    """One continuous-batching call: time to the batch's first tokens, decode time, tokens, pool bytes."""

    ttft_s: float
    decode_s: float
    new_tokens: int
    cache_bytes: int


def paged_generate(model: PreTrainedModel, input_ids: torch.Tensor, new_tokens: int) -> PagedRun:
    """Continuous batching of every row of ``input_ids``, exactly ``new_tokens`` each."""
    batch_size, prompt_tokens = input_ids.shape
    pool = paged_pool(batch_size, prompt_tokens, new_tokens)
    config = GenerationConfig(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=-1,  # fixed work per call: no request may stop early
        pad_token_id=0,
    )
    prompts = input_ids.tolist()
    done: list[Any] = []
    start = time.perf_counter()
    # Declared on a generation mixin that PreTrainedModel's type does not list.
    with model.continuous_batching_context_manager(  # type: ignore[operator]
        generation_config=config,
        continuous_batching_config=pool.config(),
        block=True,
        timeout=30,
        warmup=False,
    ) as manager:
        manager.add_requests(inputs=prompts, max_new_tokens=new_tokens, record_timestamps=True)
        while len(done) < batch_size:
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                done.append(result)
            elif result is None and not manager.is_running():
                break
        # The pool exists until the manager stops: read its size from its tensors (one byte
        # tensor in later Transformers; per-layer key and value tensors in 5.17).
        cache = getattr(manager.batch_processor, "cache", None)
        tensors = [
            getattr(cache, "cache_tensor", None),
            *getattr(cache, "key_cache", []),
            *getattr(cache, "value_cache", []),
        ]
        pool_bytes = storage_bytes(t for t in tensors if isinstance(t, torch.Tensor))
    errors = [o.error for o in done if o.error]
    if errors or len(done) != batch_size:
        raise RuntimeError(f"continuous batching finished {len(done)}/{batch_size} requests: {errors[:1]}")
    produced = {len(o.generated_tokens) for o in done}
    if produced != {new_tokens}:
        raise RuntimeError(f"continuous batching produced {sorted(produced)} tokens, expected {new_tokens}")
    first = max(o.timestamps[0] for o in done)
    last = max(o.timestamps[-1] for o in done)
    return PagedRun(ttft_s=first - start, decode_s=last - first, new_tokens=new_tokens, cache_bytes=pool_bytes)
