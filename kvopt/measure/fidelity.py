"""Comparing a candidate's outputs with the baseline's: token agreement and KL of next-token distributions.

Engine-agnostic: every engine runs the same real-text prompts (:func:`prompt_windows`) with
the baseline's settings and the candidate's, greedy (free) and teacher-forced on the
baseline's tokens, and hands the tokens and raw logits here (:class:`Reference`). The
verdict is :mod:`kvopt.quality`'s; this module only measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kvopt.errors import KvoptError
from kvopt.quality import Fidelity

__all__ = ["Reference", "compare", "prompt_windows"]

_TOP = 5  # the vLLM test-suite's "close enough": each side's token in the other's top-5


@dataclass(frozen=True)
class Reference:
    """One run's outputs on the fidelity prompts: greedy tokens (batch, new) and raw logits (batch, new, vocab)."""

    tokens: torch.Tensor
    logits: torch.Tensor


def prompt_windows(ids: Sequence[int], prompt_tokens: int, n_prompts: int, path: Path) -> torch.Tensor:
    """``n_prompts`` windows of ``prompt_tokens`` of a text's token ids, evenly spaced over it.

    Raises:
        KvoptError: the text (``path``, named in the message) is shorter than one prompt.
    """
    room = len(ids) - prompt_tokens
    if room < 0:
        raise KvoptError(
            f"quality.prompts: got {str(path)!r}, {len(ids)} tokens; allowed: a text of at least "
            f"{prompt_tokens} tokens (the profile's prompt length)"
        )
    tensor = torch.tensor(list(ids), dtype=torch.long)
    starts = [room * i // max(1, n_prompts - 1) for i in range(n_prompts)]
    return torch.stack([tensor[s : s + prompt_tokens] for s in starts])


def compare(baseline: Reference, free: Reference, forced: Reference) -> Fidelity:
    """The fidelity measures of a candidate's free and forced runs against the baseline's run."""
    same = baseline.tokens == free.tokens
    diverged = (~same).any(dim=0).nonzero()
    first = int(diverged[0]) if len(diverged) else None
    base_in_top = cand_in_top = None
    if first is not None:
        row = int((~same[:, first]).nonzero()[0])  # the first prompt that diverges there
        cand_top = free.logits[row, first].topk(_TOP).indices
        base_top = baseline.logits[row, first].topk(_TOP).indices
        base_in_top = bool((cand_top == baseline.tokens[row, first]).any())
        cand_in_top = bool((base_top == free.tokens[row, first]).any())
    log_p = torch.log_softmax(baseline.logits, dim=-1)
    log_q = torch.log_softmax(forced.logits, dim=-1)
    # KL(P || Q) per position: tokens P gives no mass add nothing; where Q has none (or is
    # not a number: an overflow in a low dtype) it is infinite, as it should be.
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    kl = terms.nan_to_num(nan=float("inf")).sum(dim=-1).clamp(min=0.0).flatten()
    batch, new = baseline.tokens.shape
    return Fidelity(
        token_agreement=float(same.float().mean()),
        first_divergence=first,
        baseline_in_candidate_top5=base_in_top,
        candidate_in_baseline_top5=cand_in_top,
        mean_kl=float(kl.mean()),
        p99_kl=float(torch.quantile(kl.double(), 0.99)),
        prompts=batch,
        prompt_tokens=0,
        new_tokens=new,
    )
