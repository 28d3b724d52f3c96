"""The search space: its choices, one candidate, and how a trial samples one.

A new cache option or choice is added here and nowhere else: the candidate knows how
to turn itself into ``from_pretrained`` and ``generate`` keyword arguments.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from transformers import CompileConfig, ContinuousBatchingConfig

from kvopt.config import SearchSpaceConfig

__all__ = [
    "Candidate",
    "SearchSpace",
    "candidate_key",
    "CandidateKey",
    "PARAM_NAMES",
    "BACKEND_NBITS",
    "STATIC_CACHES",
    "PAGE_SIZE",
    "PagedPool",
    "paged_pool",
]

PARAM_NAMES = ("cache_implementation", "attn_implementation", "dtype", "batch_size")
# Which nbits each quantized-cache backend takes (fp8 quantizes per tensor: none).
BACKEND_NBITS: dict[str, tuple[int, ...]] = {"quanto": (2, 4), "hqq": (1, 2, 3, 4, 8), "fp8": ()}
STATIC_CACHES = ("static", "offloaded_static")

# Tokens per page. Small pages waste little on short prompts; 16 divides every workload
# kvopt ships and is what paged-attention servers commonly use.
PAGE_SIZE = 16
_CB_FIELDS = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}


@dataclass(frozen=True)
class PagedPool:
    """The pages one batch needs: every request holds prompt + new tokens at its end."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    page_size: int = PAGE_SIZE

    @property
    def pages_per_request(self) -> int:
        """Whole pages for one request's prompt and new tokens."""
        return math.ceil((self.prompt_tokens + self.new_tokens) / self.page_size)

    @property
    def num_blocks(self) -> int:
        """Pages in the pool: one request's pages for every request of the batch."""
        return self.batch_size * self.pages_per_request

    def config(self) -> ContinuousBatchingConfig:
        """The continuous-batching config ``generate`` takes for this pool."""
        options: dict[str, Any] = {
            # Transformers 5.17 calls the page size block_size; later versions page_size.
            "page_size" if "page_size" in _CB_FIELDS else "block_size": self.page_size,
            "num_blocks": self.num_blocks,
            # The whole batch prefills in one step, as in a batched generate.
            "max_batch_tokens": self.batch_size * self.prompt_tokens,
            "max_requests_per_batch": self.batch_size,
            # Identical synthetic prompts must not share pages: that would skip prefill work.
            "allow_block_sharing": False,
            "use_async_batching": False,
            "use_cuda_graph": False,
        }
        if "auto_switch_to_flash" in _CB_FIELDS:
            # Measure the attention the candidate names, not a silent switch to flash. (Versions
            # without this option switch only where flash-attn is installed.)
            options["auto_switch_to_flash"] = False
        return ContinuousBatchingConfig(**options)


def paged_pool(batch_size: int, prompt_tokens: int, new_tokens: int) -> PagedPool:
    """The page pool of a ``paged`` candidate: exactly the pages its batch needs, never more."""
    return PagedPool(batch_size, prompt_tokens, new_tokens)


CandidateKey = tuple[tuple[str, Any], ...]


def candidate_key(params: dict[str, Any]) -> CandidateKey:
    """A candidate's identity from its Optuna parameters: equal keys, same settings."""
    return tuple(sorted(params.items()))


_ABSENT = object()  # a parameter the candidate does not take

# The space's list of values of each parameter that can be dropped as a whole choice
# (nbits are shared by the backends and stay per combination).
_CHOICE_FIELDS = {
    **{name: name for name in PARAM_NAMES},
    "quantized_backend": "quantized_backends",
    "static_compile": "static_compile",
    "prefix_reuse": "prefix_reuse",
}


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: the settings one trial measures."""

    cache_implementation: str
    attn_implementation: str
    dtype: str
    batch_size: int
    # Conditional options: only set for the cache that takes them.
    quantized_backend: str | None = None
    quantized_nbits: int | None = None
    compile: bool | None = None  # static caches: torch.compile of the decode step
    # Dynamic cache: start each call from a copy of the shared prefix's filled cache
    # (kvopt.engine.prefix). None where the space does not offer it (no shared prefix).
    prefix_reuse: bool | None = None

    @property
    def label(self) -> str:
        """A short readable name: ``static+compile/sdpa/float16/b4``."""
        cache = self.cache_implementation
        if cache == "quantized":
            bits = f"-{self.quantized_nbits}bit" if self.quantized_nbits else ""
            cache = f"quantized-{self.quantized_backend}{bits}"
        elif self.compile:
            cache = f"{cache}+compile"
        elif self.prefix_reuse:
            cache = f"{cache}+prefix"
        return f"{cache}/{self.attn_implementation}/{self.dtype}/b{self.batch_size}"

    def params(self) -> dict[str, Any]:
        """The Optuna parameters of this candidate (conditional ones only when active)."""
        params: dict[str, Any] = {name: getattr(self, name) for name in PARAM_NAMES}
        if self.cache_implementation == "quantized":
            params["quantized_backend"] = self.quantized_backend
            if self.quantized_nbits is not None:
                params[f"quantized_nbits_{self.quantized_backend}"] = self.quantized_nbits
        if self.cache_implementation in STATIC_CACHES and self.compile is not None:
            params["static_compile"] = self.compile
        if self.cache_implementation == "dynamic" and self.prefix_reuse is not None:
            params["prefix_reuse"] = self.prefix_reuse
        return params

    def as_dict(self) -> dict[str, Any]:
        """The candidate's fields that are set, as a plain mapping."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained``."""
        return {"dtype": self.dtype, "attn_implementation": self.attn_implementation}

    def generate_kwargs(self, prompt_tokens: int | None = None, new_tokens: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` that select the KV cache and its options.

        ``paged`` with the workload's lengths also gets the page pool kvopt measured
        (sized from the workload); without them Transformers sizes the pool from free memory.
        A ``prefix_reuse`` candidate gets none: its cache is the prefix's filled dynamic cache,
        passed in its place (Transformers refuses both at once).
        """
        if self.prefix_reuse:
            return {}
        kwargs: dict[str, Any] = {"cache_implementation": self.cache_implementation}
        if self.cache_implementation == "paged" and prompt_tokens is not None and new_tokens is not None:
            kwargs["continuous_batching_config"] = paged_pool(self.batch_size, prompt_tokens, new_tokens).config()
        if self.cache_implementation == "quantized":
            kwargs["cache_config"] = {"backend": self.quantized_backend}
            if self.quantized_nbits is not None:
                kwargs["cache_config"]["nbits"] = self.quantized_nbits
        if self.cache_implementation in STATIC_CACHES and self.compile is not None:
            if self.compile:
                config = CompileConfig(fullgraph=False)
                # Transformers compiles static caches on CUDA only unless told otherwise.
                config._compile_all_devices = True  # type: ignore[assignment]  # declared None in transformers
                kwargs["compile_config"] = config
            else:
                kwargs["disable_compile"] = True
        return kwargs


@dataclass
class SearchSpace:
    """The choices left after probing, plus what was dropped and why."""

    cache_implementation: list[str]
    attn_implementation: list[str]
    dtype: list[str]
    batch_size: list[int]
    baseline: Candidate
    quantized_backends: list[str] = field(default_factory=lambda: ["fp8"])
    quantized_nbits: list[int] = field(default_factory=lambda: [4])
    static_compile: list[bool] = field(default_factory=lambda: [False])
    # Dynamic cache: reuse the shared prefix off/on; [False] alone: the option is not offered.
    prefix_reuse: list[bool] = field(default_factory=lambda: [False])
    # The share of the trials' prompt that is the shared prefix (what reuse need not prefill).
    prefix_share: float = 0.0
    # "param=value" (a whole choice) or a candidate's label -> one-line reason it is not
    # measured here: it cannot run, cannot fit, or cannot be recommended.
    dropped: dict[str, str] = field(default_factory=dict)
    # Candidates the study must never measure although their choices stay in the space
    # (some of a choice's combinations fit, others not; or a stored study's distributions
    # hold the choice): candidate key -> reason. candidates() and size leave them out.
    excluded: dict[CandidateKey, str] = field(default_factory=dict)

    @classmethod
    def from_config(
        cls, cfg: SearchSpaceConfig, baseline: Candidate, dropped: dict[str, str], prefix_share: float = 0.0
    ) -> SearchSpace:
        """Keep the configured choices that run here; always keep the baseline's values.

        ``prefix_share``: the fraction of the trials' prompt that every request shares (0: no
        shared prefix). Prefix reuse is offered only when it is above 0; otherwise
        ``prefix_reuse=True`` is dropped with its reason.
        """
        dropped = dict(dropped)
        if True in cfg.prefix_reuse and prefix_share <= 0:
            dropped["prefix_reuse=True"] = "the profile's requests share no prefix (profile.shared_prefix_tokens: 0)"
        reuse = [r for r in cfg.prefix_reuse if f"prefix_reuse={r}" not in dropped] or [False]
        if True in reuse and baseline.cache_implementation == "dynamic":
            # The baseline prefills every prompt whole: prefix_reuse=False, said in its params.
            baseline = dataclasses.replace(baseline, prefix_reuse=False)

        def keep(param: str, values: tuple[Any, ...]) -> list[Any]:
            kept = [v for v in values if f"{param}={v}" not in dropped]
            base = getattr(baseline, param)
            if base not in kept:
                kept.insert(0, base)
            return kept

        backends = [b for b in cfg.quantized_backends if f"quantized_backend={b}" not in dropped]
        caches = keep("cache_implementation", cfg.cache_implementation)
        if not backends and "quantized" in caches:
            caches.remove("quantized")
        return cls(
            cache_implementation=caches,
            attn_implementation=keep("attn_implementation", cfg.attn_implementation),
            dtype=keep("dtype", cfg.dtype),
            batch_size=sorted(keep("batch_size", cfg.batch_size)),
            baseline=baseline,
            quantized_backends=backends,
            quantized_nbits=list(cfg.quantized_nbits),
            static_compile=list(cfg.static_compile),
            prefix_reuse=reuse,
            prefix_share=prefix_share if True in reuse else 0.0,
            dropped=dropped,
        )

    def choices(self) -> dict[str, list[Any]]:
        """The four main parameters' choices."""
        return {name: list(getattr(self, name)) for name in PARAM_NAMES}

    def nbits_for(self, backend: str) -> list[int]:
        """The configured nbits that ``backend`` takes (none for fp8)."""
        return [n for n in self.quantized_nbits if n in BACKEND_NBITS[backend]]

    def all_choices(self) -> dict[str, list[Any]]:
        """Every parameter, conditional ones included (for the grid sampler and checks)."""
        out = self.choices()
        if "quantized" in self.cache_implementation:
            out["quantized_backend"] = list(self.quantized_backends)
            for backend in self.quantized_backends:
                if self.nbits_for(backend):
                    out[f"quantized_nbits_{backend}"] = self.nbits_for(backend)
        if any(c in STATIC_CACHES for c in self.cache_implementation):
            out["static_compile"] = list(self.static_compile)
        if self.offers_prefix_reuse:
            out["prefix_reuse"] = list(self.prefix_reuse)
        return out

    @property
    def offers_prefix_reuse(self) -> bool:
        """Whether dynamic-cache candidates choose prefix reuse (the space lists it and the dynamic cache)."""
        return True in self.prefix_reuse and "dynamic" in self.cache_implementation

    def _cache_variants(self, cache: str) -> list[dict[str, Any]]:
        """The conditional options one cache takes, one dict per distinct variant."""
        if cache == "quantized":
            variants = []
            for backend in self.quantized_backends:
                nbits: list[int | None] = [*self.nbits_for(backend)] or [None]  # None: the backend takes none
                variants += [{"quantized_backend": backend, "quantized_nbits": n} for n in nbits]
            return variants
        if cache in STATIC_CACHES:
            return [{"compile": compile_} for compile_ in self.static_compile]
        if cache == "dynamic" and self.offers_prefix_reuse:
            return [{"prefix_reuse": reuse} for reuse in self.prefix_reuse]
        return [{}]

    def all_candidates(self) -> list[Candidate]:
        """Every combination of the space's choices (conditional options expanded), once each, excluded ones too."""
        return [
            Candidate(cache, attn, dtype, batch, **options)
            for cache in self.cache_implementation
            for options in self._cache_variants(cache)
            for attn, dtype, batch in itertools.product(self.attn_implementation, self.dtype, self.batch_size)
        ]

    def candidates(self) -> list[Candidate]:
        """Every distinct candidate the study may measure: the combinations less the excluded ones."""
        return [c for c in self.all_candidates() if candidate_key(c.params()) not in self.excluded]

    @property
    def size(self) -> int:
        """How many distinct candidates the study may measure."""
        return len(self.candidates())

    def excluded_reason(self, candidate: Candidate) -> str | None:
        """Why the study must not measure ``candidate`` (dropped before the study), or None."""
        return self.excluded.get(candidate_key(candidate.params()))

    def drop(self, reasons: dict[Candidate, str]) -> SearchSpace:
        """This space without the candidates ``reasons`` names, each kept with its reason.

        A value of a parameter none of whose candidates is left goes as a whole choice
        (``dropped["param=value"]``, out of the Optuna distributions), with the reason of
        its candidate nearest the baseline; the baseline's own values always stay. The other
        candidates are excluded one by one (``excluded``, ``dropped[label]``). The baseline
        is never dropped: every gain is measured against it.
        """
        base_key = candidate_key(self.baseline.params())
        out = {candidate_key(c.params()): (c, why) for c, why in reasons.items()}
        out.pop(base_key, None)
        everything = self.all_candidates()
        whole: dict[str, str] = {}

        def gone(c: Candidate) -> bool:  # already out with a whole choice
            return any(f"{k}={v}" in whole for k, v in c.params().items())

        # Main parameters first: a quantized backend whose cache is dropped needs no line of its own.
        for param, name in _CHOICE_FIELDS.items():
            for value in getattr(self, name):
                with_value = [c for c in everything if c.params().get(param, _ABSENT) == value]
                if (
                    not with_value
                    or value == self.baseline.params().get(param)
                    or any(candidate_key(c.params()) not in out for c in with_value)
                    or all(gone(c) for c in with_value)
                ):
                    continue
                nearest = min(with_value, key=lambda c: _changes_from(self.baseline, c))
                whole[f"{param}={value}"] = out[candidate_key(nearest.params())][1]
        space = self.without_choices(whole)
        left = {candidate_key(c.params()) for c in space.all_candidates()}
        for key, (candidate, why) in out.items():
            if key in left:
                space.excluded[key] = why
                space.dropped[candidate.label] = why
        return space

    def without_choices(self, reasons: dict[str, str]) -> SearchSpace:
        """This space without whole choices, ``{"param=value": reason}``; the baseline's values stay."""
        base = {f"{k}={v}" for k, v in self.baseline.params().items()}
        reasons = {k: why for k, why in reasons.items() if k.partition("=")[0] in _CHOICE_FIELDS and k not in base}
        changes: dict[str, Any] = {}
        for param, name in _CHOICE_FIELDS.items():
            kept = [v for v in getattr(self, name) if f"{param}={v}" not in reasons]
            if kept != getattr(self, name):
                changes[name] = kept
        space = dataclasses.replace(self, **changes, dropped={**self.dropped, **reasons}, excluded=dict(self.excluded))
        if "quantized_backends" in changes and not space.quantized_backends:
            space.cache_implementation = [c for c in space.cache_implementation if c != "quantized"]
        return space

    def keep_stored_choice(self, param: str, stored: list[Any]) -> SearchSpace:
        """This space with ``param``'s choices as a stored study has them, its dropped values excluded.

        A study stored with a choice that is dropped here (a lossy dtype before random weights
        were screened, a batch over today's budget) still opens: Optuna requires the same
        distribution for a parameter throughout a study, so the value stays in the distribution
        and every candidate with it is excluded, with the reason it was dropped.
        """
        name = _CHOICE_FIELDS[param]
        space = dataclasses.replace(self, excluded=dict(self.excluded))
        setattr(space, name, list(stored))
        for candidate in space.all_candidates():
            value = candidate.params().get(param)
            why = self.dropped.get(f"{param}={value}")
            if value is not None and value not in getattr(self, name) and why is not None:
                space.excluded[candidate_key(candidate.params())] = why
        return space

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every parameter as Optuna's categorical distribution (to check a stored study fits this space)."""
        return {
            name: optuna.distributions.CategoricalDistribution(values) for name, values in self.all_choices().items()
        }

    @staticmethod
    def choice_param(param: str) -> bool:
        """Whether ``param`` is a choice a stored study's distribution can keep (see keep_stored_choice)."""
        return param in _CHOICE_FIELDS

    @staticmethod
    def make_candidate(params: dict[str, Any]) -> Candidate:
        """The candidate stored Optuna params describe (needs no space: callable on the class)."""
        cache = params["cache_implementation"]
        backend = params.get("quantized_backend") if cache == "quantized" else None
        return Candidate(
            cache_implementation=cache,
            attn_implementation=params["attn_implementation"],
            dtype=params["dtype"],
            batch_size=int(params["batch_size"]),
            quantized_backend=backend,
            quantized_nbits=params.get(f"quantized_nbits_{backend}") if backend else None,
            compile=params.get("static_compile") if cache in STATIC_CACHES else None,
            prefix_reuse=params.get("prefix_reuse") if cache == "dynamic" else None,
        )

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Sample the main parameters, then the options of the chosen cache only."""
        params = {name: trial.suggest_categorical(name, values) for name, values in self.choices().items()}
        cache = params["cache_implementation"]
        if cache == "quantized":
            backend = trial.suggest_categorical("quantized_backend", self.quantized_backends)
            params["quantized_backend"] = backend
            if self.nbits_for(backend):
                key = f"quantized_nbits_{backend}"
                params[key] = trial.suggest_categorical(key, self.nbits_for(backend))
        if cache in STATIC_CACHES:
            params["static_compile"] = trial.suggest_categorical("static_compile", self.static_compile)
        if cache == "dynamic" and self.offers_prefix_reuse:
            params["prefix_reuse"] = trial.suggest_categorical("prefix_reuse", self.prefix_reuse)
        return self.make_candidate(params)


def _changes_from(baseline: Candidate, candidate: Candidate) -> int:
    """How many of the baseline's parameters ``candidate`` changes (or adds)."""
    base = baseline.params()
    return sum(1 for k, v in candidate.params().items() if base.get(k) != v)
