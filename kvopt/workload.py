"""The profile's mix of request shapes fit to the model, and the one shape every trial runs.

Knowledge: lengths only, nothing is loaded. :mod:`kvopt.engine.workload` turns a workload
into the synthetic prompts a model runs.

- **Clamping.** A shape whose prompt + new tokens exceed the model's positions has its new
  tokens capped at half the positions and its prompt cut to ``positions - new tokens``;
  shapes that become identical are merged (their shares added) and the notes say so.
- **The trial's shape** (:func:`representative`): the shape with the largest share of
  requests; among equal shares the one with the largest KV cache (prompt + new tokens),
  since KV-cache settings matter most where the cache is largest; then the one with fewer
  new tokens (cheaper to time). Confirmation re-measures the finalists on every shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvopt.config import ModelConfig, ProfileConfig

__all__ = ["Workload", "WorkloadMix", "make_mix", "make_workload", "max_positions", "representative"]

# config.json fields that bound the sequence length, by architecture family.
_POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


@dataclass(frozen=True)
class Workload:
    """The lengths one generate call runs: ``prompt_tokens`` in, exactly ``new_tokens`` out."""

    prompt_tokens: int
    new_tokens: int
    # The profile's prompt length when it had to be clamped to fit the model, else None.
    clamped_from: int | None = None
    # The fraction of the profile's requests this shape stands for (1.0: a one-shape profile).
    share: float = 1.0
    # Leading prompt tokens every request shares (a system prompt); 0: none. Always shorter
    # than the prompt, so a call that reuses the prefix's cache still prefills a token.
    shared_prefix_tokens: int = 0

    @property
    def label(self) -> str:
        """``prompt+new`` tokens, as the plan and the report name a shape."""
        return f"{self.prompt_tokens}+{self.new_tokens}"

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


def _fit(prompt: int, new: int, limit: int | None, share: float) -> Workload:
    if limit is not None and prompt + new > limit:
        # New tokens at most half the positions, so a clamped shape keeps a prompt at least as long.
        new = min(new, max(2, limit // 2))
        return Workload(prompt_tokens=max(1, limit - new), new_tokens=new, clamped_from=prompt, share=share)
    return Workload(prompt_tokens=prompt, new_tokens=new, share=share)


def representative(shapes: tuple[Workload, ...]) -> int:
    """Index of the shape a trial measures (module docstring): largest share, then KV, then fewer new tokens."""
    return max(
        range(len(shapes)),
        key=lambda i: (
            round(shapes[i].share, 9),
            shapes[i].prompt_tokens + shapes[i].new_tokens,
            -shapes[i].new_tokens,
        ),
    )


@dataclass(frozen=True)
class WorkloadMix:
    """The profile's shapes fit to the model (shares sum to 1), the one trials measure, and what changed."""

    shapes: tuple[Workload, ...]
    trial_index: int
    notes: tuple[str, ...] = ()
    # Tokens every request shares (a system prompt), clamped below the shortest prompt; 0: none.
    shared_prefix_tokens: int = 0

    @property
    def trial(self) -> Workload:
        """The shape every trial measures."""
        return self.shapes[self.trial_index]

    def describe(self) -> str:
        """One line: every shape with its share, the trial's marked."""
        parts = [
            f"{w.label} {w.share:.0%}" + (" (trials)" if i == self.trial_index else "")
            for i, w in enumerate(self.shapes)
        ]
        return ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """For the study's attrs: the shapes measured, the trial's shape, the notes."""
        return {
            "shapes": [
                {
                    "prompt_tokens": w.prompt_tokens,
                    "new_tokens": w.new_tokens,
                    "share": w.share,
                    "clamped_from": w.clamped_from,
                }
                for w in self.shapes
            ],
            "trial_shape": self.trial_index,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "notes": list(self.notes),
        }


def make_mix(profile: ProfileConfig, model_cfg: ModelConfig) -> WorkloadMix:
    """The profile's shapes clamped to the model's positions, identical ones merged (module docstring)."""
    limit = max_positions(model_cfg)
    merged: dict[tuple[int, int], Workload] = {}
    clamped: list[str] = []
    for shape in profile.shapes:
        w = _fit(shape.prompt_tokens, shape.new_tokens, limit, shape.share)
        if w.clamped_from is not None:
            clamped.append(f"{shape.label} -> {w.label}")
        key = (w.prompt_tokens, w.new_tokens)
        if key in merged:
            old = merged[key]
            merged[key] = Workload(key[0], key[1], old.clamped_from or w.clamped_from, old.share + w.share)
        else:
            merged[key] = w
    # One prefix for every request, ending at least one token before the shortest prompt.
    prefix = min([profile.shared_prefix_tokens, *(w.prompt_tokens - 1 for w in merged.values())])
    shapes = tuple(dataclasses.replace(w, shared_prefix_tokens=prefix) for w in merged.values())
    notes = []
    if clamped:
        notes.append(
            f"clamped to the model's {limit} positions (new tokens at most half, prompt = the rest): "
            + ", ".join(clamped)
        )
    if len(shapes) < len(profile.shapes):
        notes.append(f"{len(profile.shapes)} shapes became {len(shapes)} after clamping: identical ones merged")
    if prefix < profile.shared_prefix_tokens:
        notes.append(
            f"shared prefix clamped from {profile.shared_prefix_tokens} to {prefix} tokens "
            "(one less than the shortest prompt)"
        )
    return WorkloadMix(
        shapes=shapes, trial_index=representative(shapes), notes=tuple(notes), shared_prefix_tokens=prefix
    )


def make_workload(profile: ProfileConfig, model_cfg: ModelConfig) -> Workload:
    """The shape every trial of the profile measures, fit to the model (:func:`make_mix`)."""
    return make_mix(profile, model_cfg).trial
