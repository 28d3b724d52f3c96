"""The fixed workload a trial runs: synthetic prompts of an exact token length."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvopt.config import ModelConfig, ProfileConfig

__all__ = ["Workload", "make_workload", "max_positions", "make_inputs"]

# config.json fields that bound the sequence length, by architecture family.
_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


@dataclass(frozen=True)
class Workload:
    prompt_tokens: int
    new_tokens: int
    # The profile's prompt length when it had to be clamped to fit the model, else None.
    clamped_from: int | None = None

    @property
    def note(self) -> str | None:
        if self.clamped_from is None:
            return None
        return (
            f"prompt clamped from {self.clamped_from} to {self.prompt_tokens} tokens: the model "
            f"supports {self.prompt_tokens + self.new_tokens} positions including "
            f"{self.new_tokens} new tokens"
        )


def max_positions(model_cfg: ModelConfig) -> int | None:
    for key in _POSITION_FIELDS:
        value = model_cfg.architecture.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def make_workload(profile: ProfileConfig, model_cfg: ModelConfig) -> Workload:
    """The profile's lengths, with the prompt clamped to what the model supports."""
    limit = max_positions(model_cfg)
    prompt, new = profile.prompt_tokens, profile.new_tokens
    if limit is not None and prompt + new > limit:
        return Workload(prompt_tokens=max(1, limit - new), new_tokens=new, clamped_from=prompt)
    return Workload(prompt_tokens=prompt, new_tokens=new)


def make_inputs(
    workload: Workload, batch_size: int, vocab_size: int, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random token ids (fixed seed) of exactly the workload's length, no padding."""
    generator = torch.Generator().manual_seed(seed)
    # Ids from 1 up: 0 is often a special token; the values do not change the work done.
    ids = torch.randint(
        1, max(2, vocab_size), (batch_size, workload.prompt_tokens), generator=generator
    )
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
    }
