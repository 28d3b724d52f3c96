"""One timed ``generate`` call: time to first token and decode time from the same run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, StoppingCriteria, StoppingCriteriaList

from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.paged import paged_generate
from kvopt.engines.transformers.prefix import PrefixCache, cache_argument
from kvopt.interrupt import raise_if_interrupted
from kvopt.measure.memory import cache_bytes
from kvopt.measure.timing import synchronize

__all__ = ["GenerateRun", "timed_generate", "generate_kwargs", "returned_cache"]


class _FirstTokenClock(LogitsProcessor):
    """Stamps the clock when the first logits exist, i.e. right after the prefill.

    Only the first call synchronises the device, so decode steps run unperturbed.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first_token_at is None:
            synchronize(self.device)
            self.first_token_at = time.perf_counter()
        return scores


class _Deadline(StoppingCriteria):
    """Ends ``generate`` at the first step after ``seconds`` have passed (checked once per token).

    A first call that would run far past the trial budget is cut there instead of run to its
    end: its time so far already proves it too slow, and the rest would be wasted wall time.
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.perf_counter() + seconds
        self.passed = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.passed = self.passed or time.perf_counter() > self.at
        return torch.full((input_ids.shape[0],), self.passed, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


@dataclass
class GenerateRun:
    """One timed ``generate`` call: time to the first token, decode time, tokens, and the cache it used."""

    ttft_s: float
    decode_s: float
    new_tokens: int
    cache: Any  # the cache object generate used (for its byte size)
    # Set when the cache lives outside ``generate`` (the paged pool): its bytes, read from
    # its tensor before it was freed.
    pool_bytes: int | None = None
    # True when a deadline ended the call before ``new_tokens`` (then fewer were made).
    cut_by_deadline: bool = False

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV cache the call filled (the paged pool's size for ``paged``)."""
        return self.pool_bytes if self.pool_bytes is not None else cache_bytes(self.cache)

    def metrics(self, batch_size: int) -> dict[str, float]:
        """The run's timed metrics, by :mod:`kvopt.metrics` name: TTFT (ms) and decode tok/s.

        Decode throughput counts the tokens made after the first one, for every sequence of
        the batch: ``batch × (new_tokens − 1)`` over the time after the first token.
        """
        return {
            "ttft_ms": self.ttft_s * 1000.0,
            "decode_tok_s": batch_size * (self.new_tokens - 1) / self.decode_s,
        }


def generate_kwargs(candidate: Candidate, new_tokens: int, pad_token_id: int) -> dict[str, Any]:
    """Greedy, fixed-length generation with the candidate's cache settings (not for paged)."""
    return {
        "max_new_tokens": new_tokens,
        "min_new_tokens": new_tokens,  # EOS cannot end the run early: fixed work per call
        "do_sample": False,
        "pad_token_id": pad_token_id,
        "return_dict_in_generate": True,
        **candidate.generate_kwargs(),
    }


def returned_cache(out: Any) -> Any:
    """The cache a ``generate`` call used, from its output (None if it returned none)."""
    # Transformers renamed the output's past_key_values to cache (5.17 has only the old name).
    return out.cache if hasattr(out, "cache") else getattr(out, "past_key_values", None)


@torch.inference_mode()
def timed_generate(
    model: PreTrainedModel,
    inputs: dict[str, torch.Tensor],
    candidate: Candidate,
    new_tokens: int,
    device: torch.device,
    *,
    deadline_s: float | None = None,
    prefix: PrefixCache | None = None,
) -> GenerateRun:
    """One greedy ``generate`` of exactly ``new_tokens`` tokens, timed to the first token and to the last.

    ``deadline_s``: end the call at the first token after this many seconds (then the run
    has ``cut_by_deadline`` set and fewer tokens; the paged path ignores it). ``prefix``:
    the shared prefix's filled cache, required by a ``prefix_reuse`` candidate; its copy for
    this call is made inside the timed span (:mod:`kvopt.engines.transformers.prefix`). Raises
    KeyboardInterrupt first if a Ctrl-C came during the previous call (see :mod:`kvopt.interrupt`).
    """
    raise_if_interrupted()  # a Ctrl-C swallowed during the last run stops here, cleanly
    if candidate.cache_implementation == "paged":
        run = paged_generate(model, inputs["input_ids"], new_tokens)
        return GenerateRun(run.ttft_s, run.decode_s, run.new_tokens, cache=None, pool_bytes=run.cache_bytes)
    clock = _FirstTokenClock(device)
    kwargs = generate_kwargs(candidate, new_tokens, pad_token_id=0)
    deadline = _Deadline(deadline_s) if deadline_s is not None else None
    if deadline is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([deadline])
    if candidate.prefix_reuse and prefix is None:
        raise ValueError(f"{candidate.label} reuses the shared prefix: pass its filled cache (prefill_prefix)")
    synchronize(device)
    start = time.perf_counter()
    if candidate.prefix_reuse:
        assert prefix is not None  # checked above
        kwargs[cache_argument(model)] = prefix.for_batch(inputs["input_ids"].shape[0])
    # generate comes from GenerationMixin, which PreTrainedModel's type does not list.
    out = model.generate(**inputs, logits_processor=LogitsProcessorList([clock]), **kwargs)  # type: ignore[operator]
    synchronize(device)
    end = time.perf_counter()
    produced = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    cut = deadline is not None and deadline.passed and produced < new_tokens
    if (produced != new_tokens and not cut) or clock.first_token_at is None:
        raise RuntimeError(f"generate produced {produced} tokens, expected {new_tokens}")
    return GenerateRun(
        cut_by_deadline=cut,
        ttft_s=clock.first_token_at - start,
        decode_s=end - clock.first_token_at,
        new_tokens=produced,
        cache=returned_cache(out),
    )
