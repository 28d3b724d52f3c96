"""Measuring a candidate's fidelity: its outputs against the baseline's on the same real prompts.

The prompts are windows of the profile's prompt length cut from a real text (the one
shipped with kvopt, or ``quality.prompts``), tokenized with the model's own tokenizer, as
one batch of equal lengths. The baseline (its dtype, attention and a dynamic cache) runs
them once per process; its greedy tokens and logits are kept as the reference. Each
candidate then runs twice through its own ``generate`` path (cache, dtype, compile):

- free: greedy, to compare tokens (agreement, first divergence, top-5 there);
- teacher-forced: a logits processor forces the baseline's tokens, so every step's raw
  logits come from the same context as the baseline's, and their KL is comparable.

The verdict is :mod:`kvopt.quality`'s; this module only measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from kvopt.config import ModelConfig, QualityConfig
from kvopt.engines.base import FidelityMeter
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.generation import generate_kwargs
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.errors import KvoptError
from kvopt.quality import SHIPPED_TEXT, Fidelity
from kvopt.space import Candidate as AnyCandidate

__all__ = ["Reference", "fidelity_prompts", "run_outputs", "compare", "FidelityMeter"]

_TOP = 5  # the vLLM test-suite's "close enough": each side's token in the other's top-5


@dataclass(frozen=True)
class Reference:
    """One run's outputs on the fidelity prompts: greedy tokens (batch, new) and raw logits (batch, new, vocab)."""

    tokens: torch.Tensor
    logits: torch.Tensor


def fidelity_prompts(model_cfg: ModelConfig, cfg: QualityConfig, prompt_tokens: int, local_only: bool) -> torch.Tensor:
    """``cfg.n_prompts`` windows of ``prompt_tokens`` tokens, evenly spaced over the text.

    Raises:
        KvoptError: the text is shorter than one prompt.
    """
    path = Path(cfg.prompts) if cfg.prompts else SHIPPED_TEXT
    tokenizer = AutoTokenizer.from_pretrained(
        model_cfg.hub_id,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        local_files_only=local_only,
    )
    ids = tokenizer(path.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    room = len(ids) - prompt_tokens
    if room < 0:
        raise KvoptError(
            f"quality.prompts: got {str(path)!r}, {len(ids)} tokens; allowed: a text of at least "
            f"{prompt_tokens} tokens (the profile's prompt length)"
        )
    n = cfg.n_prompts
    starts = [room * i // max(1, n - 1) for i in range(n)]
    return torch.stack([ids[s : s + prompt_tokens] for s in starts])


class _ForceTokens(LogitsProcessor):
    """Makes greedy decoding pick the given tokens (batch, new); generate still records the raw logits."""

    def __init__(self, tokens: torch.Tensor, prompt_tokens: int) -> None:
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_tokens
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, self.tokens[:, step : step + 1].to(scores.device), 0.0)
        return forced  # type: ignore[return-value]


@torch.inference_mode()
def run_outputs(
    model: PreTrainedModel, candidate: Candidate, prompts: torch.Tensor, new_tokens: int, force: torch.Tensor | None
) -> Reference:
    """Greedy generate with the candidate's settings; ``force``: the tokens to teacher-force instead."""
    device = model.device
    ids = prompts.to(device)
    processors = LogitsProcessorList([_ForceTokens(force, ids.shape[1])] if force is not None else [])
    kwargs = generate_kwargs(candidate, new_tokens, pad_token_id=0)
    # generate comes from GenerationMixin, which PreTrainedModel's type does not list.
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        logits_processor=processors,
        output_logits=True,
        **kwargs,
    )
    tokens = out.sequences[:, ids.shape[1] :].cpu()
    logits = torch.stack([step.float().cpu() for step in out.logits], dim=1)
    return Reference(tokens=tokens, logits=logits)


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


class TransformersFidelityMeter(FidelityMeter):
    """Measures candidates' fidelity with one loader; the baseline's reference is run once and kept.

    Args:
        loader: the loader the timed runs use (so a model loaded here is reused by them).
        baseline: the baseline candidate (the reference's settings).
        cfg: the quality section (prompts, how many, new tokens).
        prompt_tokens: the profile's prompt length; new_tokens: the profile's new tokens.
    """

    def __init__(
        self, loader: ModelLoader, baseline: Candidate, cfg: QualityConfig, prompt_tokens: int, new_tokens: int
    ) -> None:
        self.loader = loader
        self.baseline = baseline
        self.cfg = cfg
        self.prompt_tokens = prompt_tokens
        self.new_tokens = min(new_tokens, cfg.new_tokens)
        self._prompts: torch.Tensor | None = None
        self._reference: Reference | None = None

    def reference(self) -> Reference:
        """The baseline's outputs on the prompts (run at the first call, then kept)."""
        if self._reference is None:
            baseline = self.baseline
            assert isinstance(baseline, Candidate)
            loaded, _ = self.loader.get(baseline.dtype, baseline.attn_implementation)
            self._reference = run_outputs(loaded.model, baseline, self.prompts(), self.new_tokens, None)
        return self._reference

    def prompts(self) -> torch.Tensor:
        """The prompts' token ids (batch, prompt_tokens)."""
        if self._prompts is None:
            source = self.loader.source
            self._prompts = fidelity_prompts(self.loader.model_cfg, self.cfg, self.prompt_tokens, source.local_only)
        return self._prompts

    def measure(self, candidate: AnyCandidate) -> Fidelity:
        """The candidate's fidelity, its seconds included (the reference's too, the first time)."""
        assert isinstance(candidate, Candidate)
        start = time.perf_counter()
        reference = self.reference()
        loaded, _ = self.loader.get(candidate.dtype, candidate.attn_implementation)
        prompts = self.prompts()
        free = run_outputs(loaded.model, candidate, prompts, self.new_tokens, None)
        forced = run_outputs(loaded.model, candidate, prompts, self.new_tokens, reference.tokens)
        fidelity = compare(reference, free, forced)
        return Fidelity(
            **{
                **fidelity.as_dict(),
                "prompt_tokens": self.prompt_tokens,
                "seconds": time.perf_counter() - start,
            }
        )
