"""The search space: its choices, one candidate, and how a trial samples one.

A new cache option or choice is added here and nowhere else: the candidate knows how
to turn itself into ``from_pretrained`` and ``generate`` keyword arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import optuna

from kvopt.config import SearchSpaceConfig

__all__ = ["Candidate", "SearchSpace", "PARAM_NAMES"]

PARAM_NAMES = ("cache_implementation", "attn_implementation", "dtype", "batch_size")


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: the settings one trial measures."""

    cache_implementation: str
    attn_implementation: str
    dtype: str
    batch_size: int
    # Options of the quantized cache; None for every other cache.
    quantized_backend: str | None = None
    quantized_nbits: int | None = None

    @property
    def label(self) -> str:
        cache = self.cache_implementation
        if cache == "quantized":
            cache = f"quantized-{self.quantized_backend}-{self.quantized_nbits}bit"
        return f"{cache}/{self.attn_implementation}/{self.dtype}/b{self.batch_size}"

    def params(self) -> dict[str, Any]:
        """The Optuna parameters of this candidate (sampled ones only)."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""
        return {"dtype": self.dtype, "attn_implementation": self.attn_implementation}

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` that select the KV cache."""
        kwargs: dict[str, Any] = {"cache_implementation": self.cache_implementation}
        if self.cache_implementation == "quantized":
            kwargs["cache_config"] = {
                "backend": self.quantized_backend,
                "nbits": self.quantized_nbits,
            }
        return kwargs


@dataclass
class SearchSpace:
    """The choices left after probing, plus what was dropped and why."""

    cache_implementation: list[str]
    attn_implementation: list[str]
    dtype: list[str]
    batch_size: list[int]
    quantized_backend: str
    quantized_nbits: int
    baseline: Candidate
    # "param=value" -> one-line reason it cannot run here.
    dropped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, cfg: SearchSpaceConfig, baseline: Candidate, dropped: dict[str, str]
    ) -> SearchSpace:
        """Keep the configured choices that run here; always keep the baseline's values."""

        def keep(param: str, values: tuple[Any, ...]) -> list[Any]:
            kept = [v for v in values if f"{param}={v}" not in dropped]
            base = getattr(baseline, param)
            if base not in kept:
                kept.insert(0, base)
            return kept

        return cls(
            cache_implementation=keep("cache_implementation", cfg.cache_implementation),
            attn_implementation=keep("attn_implementation", cfg.attn_implementation),
            dtype=keep("dtype", cfg.dtype),
            batch_size=sorted(keep("batch_size", cfg.batch_size)),
            quantized_backend=cfg.quantized_backend,
            quantized_nbits=cfg.quantized_nbits,
            baseline=baseline,
            dropped=dict(dropped),
        )

    def choices(self) -> dict[str, list[Any]]:
        return {name: list(getattr(self, name)) for name in PARAM_NAMES}

    @property
    def size(self) -> int:
        n = 1
        for values in self.choices().values():
            n *= len(values)
        return n

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {
            name: optuna.distributions.CategoricalDistribution(values)
            for name, values in self.choices().items()
        }

    def make_candidate(self, params: dict[str, Any]) -> Candidate:
        quantized = params["cache_implementation"] == "quantized"
        return Candidate(
            cache_implementation=params["cache_implementation"],
            attn_implementation=params["attn_implementation"],
            dtype=params["dtype"],
            batch_size=int(params["batch_size"]),
            quantized_backend=self.quantized_backend if quantized else None,
            quantized_nbits=self.quantized_nbits if quantized else None,
        )

    def suggest(self, trial: optuna.Trial) -> Candidate:
        params = {
            name: trial.suggest_categorical(name, values)
            for name, values in self.choices().items()
        }
        return self.make_candidate(params)
