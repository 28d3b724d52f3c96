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

from pathlib import Path

import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList, PreTrainedModel

from kvopt.config import ModelConfig, QualityConfig
from kvopt.engines.base import FidelityMeter
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.generation import generate_kwargs
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.measure.fidelity import Reference, prompt_windows
from kvopt.quality import SHIPPED_TEXT
from kvopt.space import Candidate as AnyCandidate

__all__ = ["fidelity_prompts", "run_outputs", "TransformersFidelityMeter"]


def fidelity_prompts(model_cfg: ModelConfig, cfg: QualityConfig, prompt_tokens: int, local_only: bool) -> torch.Tensor:
    """``cfg.n_prompts`` windows of ``prompt_tokens`` tokens, evenly spaced over the text, tokenized by the model.

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
    return prompt_windows(ids.tolist(), prompt_tokens, cfg.n_prompts, path)


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

    def prompts(self) -> torch.Tensor:
        """The prompts' token ids (batch, prompt_tokens)."""
        if self._prompts is None:
            source = self.loader.source
            self._prompts = fidelity_prompts(self.loader.model_cfg, self.cfg, self.prompt_tokens, source.local_only)
        return self._prompts

    def run(self, candidate: AnyCandidate, forced: torch.Tensor | None) -> Reference:
        """The candidate's ``generate`` outputs on the prompts (its model loaded by the trials' loader)."""
        assert isinstance(candidate, Candidate)
        loaded, _ = self.loader.get(candidate.dtype, candidate.attn_implementation)
        return run_outputs(loaded.model, candidate, self.prompts(), self.new_tokens, forced)
