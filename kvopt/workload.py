"""The fixed workload every trial runs: the profile's prompt and new tokens, fit to the model.

Knowledge: lengths only, nothing is loaded. :mod:`kvopt.engine.workload` turns a workload
into the synthetic prompts a model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvopt.config import ModelConfig, ProfileConfig

__all__ = ["Workload", "make_workload", "max_positions"]

# config.json fields that bound the sequence length, by architecture family.
_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


@dataclass(frozen=True)
class Workload:
    """The lengths one generate call runs: ``prompt_tokens`` in, exactly ``new_tokens`` out."""

    prompt_tokens: int
    new_tokens: int
    # The profile's prompt length when it had to be clamped to fit the model, else None.
    clamped_from: int | None = None

    @property
    def note(self) -> str | None:
        """What was clamped and why, for the plan and the report; None when nothing was."""
        if self.clamped_from is None:
            return None
        return (
            f"prompt clamped from {self.clamped_from} to {self.prompt_tokens} tokens: the model "
            f"supports {self.prompt_tokens + self.new_tokens} positions including "
            f"{self.new_tokens} new tokens"
        )


def max_positions(model_cfg: ModelConfig) -> int | None:
    """The longest sequence the model's architecture allows, or None if its config does not say."""
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
