"""The Transformers engine's candidate: its knobs, its settings, and its search space.

The knob table (:data:`KNOBS`) is the engine's whole search vocabulary; the candidate turns
an assignment into ``from_pretrained`` and ``generate`` keyword arguments. A new cache
option is a line in the table and a field here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import CompileConfig, ContinuousBatchingConfig

from kvopt.config import ATTN_IMPLEMENTATIONS, CACHE_IMPLEMENTATIONS, DTYPES, QUANTIZED_BACKENDS, SearchSpaceConfig
from kvopt.space import Candidate as BaseCandidate
from kvopt.space import Knob, SearchSpace

__all__ = [
    "Candidate",
    "space_from_config",
    "transformers_space",
    "PARAM_NAMES",
    "BACKEND_NBITS",
    "STATIC_CACHES",
    "PAGE_SIZE",
    "PagedPool",
    "paged_pool",
]

PARAM_NAMES = ("cache_implementation", "attn_implementation", "dtype", "batch_size")  # the unconditional knobs
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
class Candidate(BaseCandidate):
    """One point of the Transformers search space: the settings one trial measures."""

    ENGINE: ClassVar[str] = "transformers"
    KNOBS: ClassVar[tuple[Knob, ...]] = ()  # set below, once the table is written

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

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Candidate:
        """The candidate stored Optuna params describe."""
        cache = params["cache_implementation"]
        backend = params.get("quantized_backend") if cache == "quantized" else None
        return cls(
            cache_implementation=cache,
            attn_implementation=params["attn_implementation"],
            dtype=params["dtype"],
            batch_size=int(params["batch_size"]),
            quantized_backend=backend,
            quantized_nbits=params.get(f"quantized_nbits_{backend}") if backend else None,
            compile=params.get("static_compile") if cache in STATIC_CACHES else None,
            prefix_reuse=params.get("prefix_reuse") if cache == "dynamic" else None,
        )

    def levels(self) -> dict[str, str]:
        """The performance model's factors: the cache with its categorical options, attention, dtype."""
        return {"cache": _cache_variant(self), "attn": self.attn_implementation, "dtype": self.dtype}

    def ordinals(self) -> dict[str, float]:
        """The quantized cache's nbits as log2 (0 where none)."""
        return {"nbits": math.log2(self.quantized_nbits) if self.quantized_nbits else 0.0}

    @classmethod
    def factor_order(cls, factor: str, levels: Sequence[str]) -> list[str]:
        """Cache variants sorted by name; the other factors in the space's order."""
        return sorted(set(levels)) if factor == "cache" else list(dict.fromkeys(levels))

    @classmethod
    def prior_means(cls, metric: str, prefix_share: float) -> dict[str, float]:
        """Reusing the prefix leaves only the rest of the prompt to prefill: TTFT in proportion."""
        if metric == "ttft_ms" and 0 < prefix_share < 1:
            return {"cache=dynamic+prefix": math.log(1.0 - prefix_share)}
        return {}

    def groups(self) -> dict[str, tuple[Any, ...]]:
        """One setting each: batch size, the cache with its options, attention, dtype."""
        return {
            "batch_size": (self.batch_size,),
            "cache": (
                self.cache_implementation,
                self.quantized_backend,
                self.quantized_nbits,
                self.compile,
                self.prefix_reuse,
            ),
            "attn_implementation": (self.attn_implementation,),
            "dtype": (self.dtype,),
        }

    def classify(self, baseline: BaseCandidate) -> tuple[str, str]:
        """Quantized caches and a lower dtype than the model's lose; compile or an upcast are checked."""
        model_dtype = baseline.dtype  # type: ignore[attr-defined]  # a Transformers baseline
        if self.cache_implementation == "quantized":
            bits = f" {self.quantized_nbits}-bit" if self.quantized_nbits else ""
            return "lossy", f"quantized KV cache ({self.quantized_backend}{bits})"
        if self.dtype != model_dtype and self.dtype != _HIGHEST_DTYPE:
            return "lossy", f"{self.dtype} instead of the model's {model_dtype}"
        if self.compile:
            return "checked", "torch.compile of the decode step"
        if self.dtype != model_dtype:
            return "checked", f"{self.dtype} instead of the model's {model_dtype}"
        exact = "exact by construction: unquantized cache, the model's dtype, exact attention, not compiled"
        if self.prefix_reuse:  # the prefix's keys and values are those a whole-prompt prefill computes
            exact += ", the shared prefix's cache reused as computed"
        return "exact", exact

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


# Precision order of the dtypes kvopt samples: float32 is the reference; the 16-bit types lose.
_HIGHEST_DTYPE = "float32"


def _cache_variant(candidate: Candidate) -> str:
    """The cache and its categorical options (nbits left out: it is ordinal)."""
    if candidate.cache_implementation == "quantized":
        return f"quantized-{candidate.quantized_backend}"
    if candidate.compile:
        return f"{candidate.cache_implementation}+compile"
    if candidate.prefix_reuse:
        return f"{candidate.cache_implementation}+prefix"
    return candidate.cache_implementation


def _knobs(
    caches: Sequence[str],
    attns: Sequence[str],
    dtypes: Sequence[str],
    batches: Sequence[int],
    backends: Sequence[str],
    nbits: Sequence[int],
    compile_: Sequence[bool],
    reuse: Sequence[bool],
    baseline: Candidate | None,
) -> tuple[Knob, ...]:
    """The knob table with the given values (table order: a conditional knob follows its parent)."""
    base = baseline or Candidate("dynamic", "sdpa", "float32", 1)
    quantized = ("cache_implementation", ("quantized",))
    return (
        Knob("cache_implementation", tuple(caches), baseline=base.cache_implementation),
        Knob("quantized_backend", tuple(backends), when=quantized, lossy=frozenset(backends)),
        *(
            Knob(
                f"quantized_nbits_{backend}",
                tuple(n for n in nbits if n in BACKEND_NBITS[backend]),
                kind="ordinal",
                when=("quantized_backend", (backend,)),
                whole_choice=False,  # nbits are shared by the backends: dropped per combination
            )
            for backend in BACKEND_NBITS
        ),
        Knob("static_compile", tuple(compile_), kind="boolean", when=("cache_implementation", STATIC_CACHES)),
        Knob("prefix_reuse", tuple(reuse), kind="boolean", when=("cache_implementation", ("dynamic",))),
        Knob("attn_implementation", tuple(attns), baseline=base.attn_implementation),
        Knob("dtype", tuple(dtypes), baseline=base.dtype),
        Knob("batch_size", tuple(batches), kind="ordinal", baseline=base.batch_size),
    )


# Every value the engine knows (a config narrows them).
Candidate.KNOBS = _knobs(
    CACHE_IMPLEMENTATIONS,
    ATTN_IMPLEMENTATIONS,
    DTYPES,
    (1, 2, 4, 8, 16, 32, 64),
    QUANTIZED_BACKENDS,
    sorted({n for ns in BACKEND_NBITS.values() for n in ns}),
    (False, True),
    (False, True),
    None,
)


def transformers_space(
    cache_implementation: Sequence[str],
    attn_implementation: Sequence[str],
    dtype: Sequence[str],
    batch_size: Sequence[int],
    baseline: Candidate,
    quantized_backends: Sequence[str] = ("fp8",),
    quantized_nbits: Sequence[int] = (4,),
    static_compile: Sequence[bool] = (False,),
    prefix_reuse: Sequence[bool] = (False,),
    prefix_share: float = 0.0,
    dropped: dict[str, str] | None = None,
) -> SearchSpace:
    """A Transformers search space from each knob's values (prefix reuse offered when ``True`` is listed)."""
    caches = list(cache_implementation)
    if not quantized_backends and "quantized" in caches:
        caches.remove("quantized")
    knobs = _knobs(
        caches,
        attn_implementation,
        dtype,
        batch_size,
        quantized_backends,
        quantized_nbits,
        static_compile,
        prefix_reuse if True in prefix_reuse else [],
        baseline,
    )
    offered = True in prefix_reuse and "dynamic" in caches
    return SearchSpace(
        knobs=knobs,
        baseline=baseline,
        candidate_type=Candidate,
        prefix_share=prefix_share if offered else 0.0,
        dropped=dict(dropped or {}),
    )


def space_from_config(
    cfg: SearchSpaceConfig, baseline: Candidate, dropped: dict[str, str], prefix_share: float = 0.0
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
    return transformers_space(
        cache_implementation=keep("cache_implementation", cfg.cache_implementation),
        attn_implementation=keep("attn_implementation", cfg.attn_implementation),
        dtype=keep("dtype", cfg.dtype),
        batch_size=sorted(keep("batch_size", cfg.batch_size)),
        baseline=baseline,
        quantized_backends=backends,
        quantized_nbits=list(cfg.quantized_nbits),
        static_compile=list(cfg.static_compile),
        prefix_reuse=reuse,
        prefix_share=prefix_share,
        dropped=dropped,
    )
