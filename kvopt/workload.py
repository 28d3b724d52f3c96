"""The profile's mix of request shapes fit to the model, and the one shape every trial runs.

Knowledge: lengths only, nothing is loaded. :mod:`kvopt.engines.transformers.workload` turns a workload
into the synthetic prompts a model runs.

- **Clamping.** A shape whose prompt + new tokens exceed the model's positions has its new
  tokens capped at half the positions and its prompt cut to ``positions - new tokens``;
  shapes that become identical are merged (their shares added) and the notes say so.
- **The shared prefix** (:func:`fit_prefix`): one prefix, a system prompt, carried by every
  shape. When the trial's shape was clamped, the prefix keeps the share of the prompt it has
  in the profile (rag on gpt2: 500 of 8192 -> 47 of 768) instead of its token count, so
  clamping does not inflate what reusing it can gain. It always ends before the shortest
  prompt, so a call that reuses it still prefills a token.
- **The trial's shape** (:func:`representative`): the shape with the largest share of
  requests; among equal shares the one with the largest KV cache (prompt + new tokens),
  since KV-cache settings matter most where the cache is largest; then the one with fewer
  new tokens (cheaper to time). Confirmation re-measures the finalists on every shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from kvopt.config import ModelConfig, ProfileConfig

__all__ = [
    "Workload",
    "WorkloadMix",
    "fit_prefix",
    "make_mix",
    "make_workload",
    "max_positions",
    "representative",
    "WindowPlacement",
    "placement",
]

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
    # Tokens every request shares (a system prompt), fit by fit_prefix; 0: none.
    shared_prefix_tokens: int = 0
    # The profile's own shared prefix, and the profile prompt whose share of it the prefix keeps
    # (None: not scaled, the trial's shape was not clamped).
    profile_prefix_tokens: int = 0
    prefix_share_of: int | None = None

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

    def describe_prefix(self) -> str:
        """The shared prefix in one phrase, as the plan and ``kvopt profiles`` print it; "" when none."""
        tokens, profile = self.shared_prefix_tokens, self.profile_prefix_tokens
        if not tokens:
            return ""
        said = f"{tokens} tokens in every request"
        if self.prefix_share_of is not None:
            share = profile / self.prefix_share_of
            said += f" ({profile} of {self.prefix_share_of} in the profile, "
            scaled = _scaled_prefix(profile, self.trial.prompt_tokens, self.prefix_share_of)
            if tokens == scaled:
                return said + f"kept at its {share:.1%} share of the clamped prompt)"
            return said + (
                f"its {share:.1%} share of the clamped prompt, {scaled} tokens, cut to one less than "
                f"the shortest prompt, {tokens + 1})"
            )
        if tokens < profile:
            return said + f" ({profile} in the profile, cut to one less than the shortest prompt, {tokens + 1})"
        return said

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
            "profile_shared_prefix_tokens": self.profile_prefix_tokens,
            "notes": list(self.notes),
        }


def _scaled_prefix(prefix: int, prompt: int, profile_prompt: int) -> int:
    """``prefix`` tokens of ``profile_prompt`` kept at the same share of ``prompt`` (rounded, at least 1)."""
    return max(1, math.floor(prefix * prompt / profile_prompt + 0.5))


def fit_prefix(prefix: int, trial: Workload, trial_profile_prompt: int, shortest_prompt: int) -> tuple[int, int | None]:
    """The mix's one shared prefix, and the profile prompt whose share it keeps (None: not scaled).

    One prefix for the whole mix: it is one system prompt, whose cache is filled once and
    copied into every call (recommended.py carries one ``SHARED_PREFIX_TOKENS``). Its share is
    kept where the search decides — the trial's shape, where every trial measures what reusing
    it gains — taken from the shortest profile prompt that shape stands for (rag on gpt2:
    768+256 stands for 8192, 16384 and 32768 + 256; the prefix is 500 of 8192 there at most,
    so 47 of 768). Unclamped, the prefix is the profile's. Either way it ends at least one token
    before the shortest prompt of the mix.

    Args:
        prefix: the profile's ``shared_prefix_tokens`` (0: none).
        trial: the trial's shape, fit to the model.
        trial_profile_prompt: the shortest profile prompt the trial's shape stands for.
        shortest_prompt: the shortest prompt of the fitted mix.
    """
    if prefix <= 0:
        return 0, None
    share_of = None
    if trial.prompt_tokens < trial_profile_prompt:  # the trial's shape was clamped
        prefix, share_of = _scaled_prefix(prefix, trial.prompt_tokens, trial_profile_prompt), trial_profile_prompt
    return min(prefix, shortest_prompt - 1), share_of


def make_mix(profile: ProfileConfig, model_cfg: ModelConfig) -> WorkloadMix:
    """The profile's shapes clamped to the model's positions, identical ones merged (module docstring)."""
    limit = max_positions(model_cfg)
    merged: dict[tuple[int, int], Workload] = {}
    # Per fitted shape: the shortest profile prompt it stands for (where the prefix's share is largest).
    source: dict[tuple[int, int], int] = {}
    clamped: list[str] = []
    for shape in profile.shapes:
        w = _fit(shape.prompt_tokens, shape.new_tokens, limit, shape.share)
        if w.clamped_from is not None:
            clamped.append(f"{shape.label} -> {w.label}")
        key = (w.prompt_tokens, w.new_tokens)
        source[key] = min(source.get(key, shape.prompt_tokens), shape.prompt_tokens)
        if key in merged:
            old = merged[key]
            merged[key] = Workload(key[0], key[1], old.clamped_from or w.clamped_from, old.share + w.share)
        else:
            merged[key] = w
    fitted = tuple(merged.values())
    trial_index = representative(fitted)
    trial = fitted[trial_index]
    wanted = profile.shared_prefix_tokens
    prefix, share_of = fit_prefix(
        wanted, trial, source[(trial.prompt_tokens, trial.new_tokens)], min(w.prompt_tokens for w in fitted)
    )
    shapes = tuple(dataclasses.replace(w, shared_prefix_tokens=prefix) for w in fitted)
    notes = []
    if clamped:
        notes.append(
            f"clamped to the model's {limit} positions (new tokens at most half, prompt = the rest): "
            + ", ".join(clamped)
        )
    if len(shapes) < len(profile.shapes):
        notes.append(f"{len(profile.shapes)} shapes became {len(shapes)} after clamping: identical ones merged")
    if share_of is not None:
        scaled = _scaled_prefix(wanted, trial.prompt_tokens, share_of)
        notes.append(
            f"shared prefix scaled from {wanted} to {scaled} tokens: its {wanted / share_of:.1%} share of the "
            f"profile's {share_of}-token prompt, kept in the trial's clamped {trial.prompt_tokens}-token prompt"
        )
    else:
        scaled = wanted
    if prefix < scaled:
        notes.append(f"shared prefix clamped from {scaled} to {prefix} tokens (one less than the shortest prompt)")
    return WorkloadMix(
        shapes=shapes,
        trial_index=trial_index,
        notes=tuple(notes),
        shared_prefix_tokens=prefix,
        profile_prefix_tokens=wanted,
        prefix_share_of=share_of,
    )


def make_workload(profile: ProfileConfig, model_cfg: ModelConfig) -> Workload:
    """The shape every trial of the profile measures, fit to the model (:func:`make_mix`)."""
    return make_mix(profile, model_cfg).trial


@dataclass(frozen=True)
class WindowPlacement:
    """Where the window sits: the cache holds ``context_tokens`` entries, then ``steps`` decode steps."""

    context_tokens: int
    steps: int

    def mean_context(self) -> float:
        """The mean number of positions a window step attends over.

        The cache holds ``context_tokens``; the first generated token is prefilled at position
        ``context_tokens`` and step ``j`` (1-based) attends over ``context_tokens + 1 + j`` positions.
        """
        return self.context_tokens + 1 + (self.steps + 1) / 2


def placement(prompt_tokens: int, new_tokens: int, window: int) -> WindowPlacement:
    """A window of at most ``window`` steps whose mean attended context is the full call's.

    The full call's decode step ``j`` (1 … new_tokens − 1) attends over ``prompt + j``
    positions: mean ``prompt + new_tokens / 2``. The window is shortened to the full call's
    decode steps when those are fewer, and kept inside the full call's length (so a static
    cache sized for the full call holds it).
    """
    if new_tokens < 2 or window < 1:
        raise ValueError(f"a decode window needs new_tokens >= 2 and window >= 1 (got {new_tokens}, {window})")
    steps = min(window, new_tokens - 1)
    target = prompt_tokens + new_tokens / 2
    context = round(target - 1 - (steps + 1) / 2)
    # The window's last step writes position context + steps; the full call's last is prompt + new − 2.
    context = max(1, min(context, prompt_tokens + new_tokens - 2 - steps))
    return WindowPlacement(context_tokens=context, steps=steps)
