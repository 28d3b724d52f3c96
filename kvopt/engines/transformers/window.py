"""A decode window: per-step decode latencies at a chosen context, without the decode before it.

A full-length call spends most of its time decoding (gpt2 at 768+256 on the 2-core Xeon:
20–23 s a whole call, 1.2–1.4 s a 16-step window; scripts/bench_window.py), so timing whole
calls buys two samples in a 20-s trial. The
decode rate of a fixed per-step loop depends on the context the step attends over, not on
how the cache got there. So, as llama-bench times tg apart from pp:

- **setup (untimed, once per candidate and shape):** one ``generate`` of one new token on
  ``context_tokens`` prompt tokens, with the candidate's cache settings; the cache it filled
  (``context_tokens`` entries) is kept. Static caches are sized to the full call's length
  (``max_cache_len``), since their per-step cost grows with the buffer, not the entries.
- **each sample (timed):** a copy of that cache (made before the clock starts), then a
  ``generate`` of ``window + 1`` tokens from it: the one token after the cache is prefilled
  (the clock's zero), then ``window`` decode steps, each stamped when its logits exist.

The window's placement (:func:`placement`) puts its mean attended context at the full
call's mean, ``prompt + new_tokens / 2``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel

from kvopt.engines.transformers.candidate import STATIC_CACHES, Candidate
from kvopt.engines.transformers.generation import generate_kwargs, returned_cache
from kvopt.engines.transformers.prefix import cache_argument
from kvopt.interrupt import raise_if_interrupted
from kvopt.measure.timing import synchronize
from kvopt.workload import WindowPlacement

__all__ = ["DecodeWindow", "fill_window_context"]


class _StepClock(LogitsProcessor):
    """Stamps the clock each time logits exist (after the prefill, then after every decode step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize(self.device)  # generate syncs every step anyway (its stopping check reads a flag)
        self.stamps.append(time.perf_counter())
        return scores


@dataclass
class DecodeWindow:
    """A filled cache at the window's start; :meth:`timed` decodes ``steps`` steps from a copy of it."""

    model: PreTrainedModel
    candidate: Candidate
    input_ids: torch.Tensor  # context_tokens + 1 ids per row: the cache's entries and the token after
    cache: Any
    where: WindowPlacement
    device: torch.device
    fill_s: float

    @torch.inference_mode()
    def timed(self) -> list[float]:
        """The window's per-step decode latencies in seconds (``steps`` of them)."""
        raise_if_interrupted()
        fresh = copy.deepcopy(self.cache)  # generate appends to the cache it is given
        clock = _StepClock(self.device)
        # The cache comes from the filled context: no cache_implementation beside it (generate refuses both).
        kwargs = generate_kwargs(self.candidate, self.where.steps + 1, pad_token_id=0)
        kwargs.pop("cache_implementation", None)
        kwargs[cache_argument(self.model)] = fresh
        synchronize(self.device)
        out = self.model.generate(  # type: ignore[operator]  # GenerationMixin, not listed on PreTrainedModel
            input_ids=self.input_ids,
            attention_mask=torch.ones_like(self.input_ids),
            logits_processor=LogitsProcessorList([clock]),
            **kwargs,
        )
        produced = out.sequences.shape[1] - self.input_ids.shape[1]
        if produced != self.where.steps + 1 or len(clock.stamps) != self.where.steps + 1:
            raise RuntimeError(f"decode window produced {produced} tokens, expected {self.where.steps + 1}")
        return [b - a for a, b in zip(clock.stamps, clock.stamps[1:])]

    def metrics(self, steps_s: list[float]) -> dict[str, float]:
        """Decode throughput of one window: ``batch × steps`` tokens over the steps' seconds."""
        return {"decode_tok_s": self.candidate.batch_size * len(steps_s) / sum(steps_s)}


@torch.inference_mode()
def fill_window_context(
    model: PreTrainedModel,
    candidate: Candidate,
    input_ids: torch.Tensor,
    where: WindowPlacement,
    full_length: int,
    device: torch.device,
) -> DecodeWindow:
    """Fill the candidate's cache with ``where.context_tokens`` tokens of ``input_ids`` (untimed setup).

    ``input_ids`` has at least ``context_tokens + 1`` ids per row. ``full_length``: prompt +
    new tokens of the full call, the length a static cache is allocated for. A candidate
    reusing a shared prefix fills a plain dynamic cache: its decode steps are the dynamic
    cache's (the prefix changes only what is prefilled).
    """
    context = input_ids[:, : where.context_tokens]
    kwargs = generate_kwargs(candidate, 1, pad_token_id=0)
    if candidate.cache_implementation in STATIC_CACHES:
        kwargs["max_cache_len"] = full_length
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(input_ids=context, attention_mask=torch.ones_like(context), **kwargs)  # type: ignore[operator]
    synchronize(device)
    cache = returned_cache(out)
    if cache is None:
        raise RuntimeError(f"{candidate.label}: generate returned no cache to decode the window from")
    return DecodeWindow(
        model=model,
        candidate=candidate,
        input_ids=input_ids[:, : where.context_tokens + 1],
        cache=cache,
        where=where,
        device=device,
        fill_s=time.perf_counter() - start,
    )
