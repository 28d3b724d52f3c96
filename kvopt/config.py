"""Typed, validated configuration: the one place that knows every field.

Hydra composes ``conf/`` into a DictConfig; :func:`validate` turns it into frozen
dataclasses and reports *every* problem at once, each naming the field, what was
given and what is allowed, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kvopt.errors import ConfigError
from kvopt.metrics import DIRECTIONS, METRICS, SLO_KEYS
from kvopt.traffic import read_requests, shapes_from_requests, tokenizer_counter

__all__ = [
    "CACHE_IMPLEMENTATIONS",
    "ATTN_IMPLEMENTATIONS",
    "DTYPES",
    "ENGINE_NAMES",
    "EngineConfig",
    "SAMPLERS",
    "STORAGE_BACKENDS",
    "METRICS",
    "DIRECTIONS",
    "SLO_KEYS",
    "ModelConfig",
    "ProfileConfig",
    "Shape",
    "SearchSpaceConfig",
    "SamplerConfig",
    "StorageConfig",
    "StudyConfig",
    "MeasureConfig",
    "parse_duration",
    "TrialConfig",
    "ConfirmConfig",
    "PruningConfig",
    "ScaleConfig",
    "QualityConfig",
    "QUALITY_BOUNDS",
    "SHARED_DEVICE_POLICIES",
    "KvoptConfig",
    "validate",
    "validate_profile",
]

# What transformers 5 accepts (sliding_window/hybrid are deprecated aliases, left out).
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "quantized", "paged")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZED_BACKENDS = ("fp8", "quanto", "hqq")
# The engines kvopt can tune (kvopt.engines holds each one's code).
ENGINE_NAMES = ("transformers", "llamacpp")
SAMPLERS = ("profile", "tpe", "gp", "nsga2", "random", "grid")
STORAGE_BACKENDS = ("rdb", "journal", "memory")
WEIGHTS_MODES = ("auto", "pretrained", "random")
ISOLATION_MODES = ("inline", "process")
# What a worker does when another kvopt process measures on the same host and device.
SHARED_DEVICE_POLICIES = ("wait", "refuse", "flag")
# METRICS, DIRECTIONS and SLO_KEYS (the study's objectives) are defined in kvopt.metrics.
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ModelConfig:
    """The model to tune: its hub id and revision, which weights, its dtype and architecture."""

    name: str
    hub_id: str
    revision: str
    weights: str
    trust_remote_code: bool
    dtype: str
    architecture: dict[str, Any]
    # engine=llamacpp: the GGUF file to tune (None for the Transformers engine).
    gguf: str | None = None

    @property
    def model_type(self) -> str:
        """The architecture family (``gpt2``, ``llama``, ...) from config.json's ``model_type``."""
        return str(self.architecture["model_type"])


@dataclass(frozen=True)
class Shape:
    """One request shape of a profile's mix: prompt tokens in, new tokens out, its share of requests."""

    prompt_tokens: int
    new_tokens: int
    share: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.prompt_tokens}+{self.new_tokens}"


@dataclass(frozen=True)
class ProfileConfig:
    """A workload mix (request shapes and their shares, warm-up, repetitions) and what matters in it.

    ``shapes`` come from ``context_lengths`` x ``output_lengths`` (equal shares), an explicit
    ``shapes`` list, a ``traffic_file`` of observed requests, or one ``prompt_tokens`` +
    ``new_tokens`` pair; :mod:`kvopt.workload` fits them to the model.
    """

    name: str
    shapes: tuple[Shape, ...]
    warmup: int
    repetitions: int
    n_trials: int
    weights: dict[str, float]
    slo: dict[str, float | None]
    # Tokens every request starts with (a system prompt), clamped like the shapes; 0: none.
    shared_prefix_tokens: int = 0
    traffic_file: str | None = None


@dataclass(frozen=True)
class SearchSpaceConfig:
    """The choices the study may sample, before the probe drops what cannot run here."""

    name: str
    cache_implementation: tuple[str, ...]
    attn_implementation: tuple[str, ...]
    dtype: tuple[str, ...]
    batch_size: tuple[int, ...]
    # Quantized cache: backends to sample ("auto": every one installed here) and the nbits
    # to sample for backends that take them; static caches: torch.compile off/on.
    quantized_backends: tuple[str, ...] = ("fp8",)
    quantized_backends_auto: bool = True
    quantized_nbits: tuple[int, ...] = (4,)
    static_compile: tuple[bool, ...] = (False,)
    # Dynamic cache: reuse the profile's shared prefix off/on (kvopt.engines.transformers.prefix).
    prefix_reuse: tuple[bool, ...] = (False,)
    max_dtype_slowdown: float | None = None


@dataclass(frozen=True)
class SamplerConfig:
    """Which Optuna sampler proposes candidates, and its few settings."""

    name: str
    n_startup_trials: int | None = None
    population_size: int | None = None
    # profile sampler: every front_every-th trial extends the Pareto front (0: never).
    front_every: int | None = None


@dataclass(frozen=True)
class StorageConfig:
    """Where the study lives: an RDB URL, a journal file, or memory."""

    backend: str
    url: str | None


@dataclass(frozen=True)
class StudyConfig:
    """The study's name (None: derived from model, profile and device) and its trial and time budget."""

    name: str | None
    n_trials: int
    timeout: float | None
    # Stop on its own once no unmeasured candidate can plausibly beat the profile's best.
    converge: bool = True
    # A study to start from (STUDY or STUDY@STORAGE_URL): its profile-best first, its
    # measurements as the performance model's prior.
    warm_start: str | None = None
    # Seconds for the whole command, search and confirmation together (None: no budget).
    budget: float | None = None


@dataclass(frozen=True)
class MeasureConfig:
    """Adaptive repetitions: stop when the 95% CI of each median is within rel_precision."""

    adaptive: bool = True
    rel_precision: float = 0.03
    max_repetitions: int = 40
    max_seconds: float = 20.0
    # Decode steps of the split protocol's decode window (kvopt.engines.transformers.window); 0: whole calls.
    decode_window: int = 16


@dataclass(frozen=True)
class TrialConfig:
    """Where a trial runs: in this process (fast) or a fresh spawned one (isolated)."""

    isolation: str = "inline"
    timeout_s: float = 600.0


@dataclass(frozen=True)
class PruningConfig:
    """Skip candidates that cannot fit (before loading) or cannot win (while measuring)."""

    memory_budget_mb: float | None = None  # None: what the device has free at the start
    dominated: bool = True


@dataclass(frozen=True)
class ConfirmConfig:
    """Re-measure the recommendation, the next top_k and the baseline, interleaved."""

    top_k: int = 3
    # At most this many rounds per run; they stop earlier once the decision is clear (>= 5).
    rounds: int = 20
    max_seconds: float = 120.0
    # Profile-score difference below which two finalists are a practical tie (0.02: about 2%
    # of the weighted objectives, under the between-process spread of a reported median, 2-15%).
    equivalence: float = 0.02


@dataclass(frozen=True)
class ScaleConfig:
    """Many workers on one study: device turns and recovery from dead workers."""

    shared_device: str = "wait"
    # Host-local folder for the device locks; None: the system's temp folder.
    lock_dir: str | None = None
    # RDB storages: a running trial records a heartbeat every heartbeat_s seconds; one
    # silent for grace_s is failed by any worker and its candidate re-queued.
    heartbeat_s: int = 10
    grace_s: int = 60
    # How many times a trial whose worker died is re-queued (0: never).
    max_retry: int = 1


@dataclass(frozen=True)
class QualityConfig:
    """The quality guard: bounds on how far a candidate's outputs may stray from the baseline's.

    The bounds (None: no bound) may be set per profile (a ``quality:`` section in the profile's
    yaml overrides these). docs/quality.md defines the measures and says why these defaults.
    """

    # Mean KL(baseline || candidate) of the next-token distributions, nats per token.
    max_mean_kl: float | None = 0.01
    # Share of greedy tokens equal to the baseline's.
    min_token_agreement: float | None = 0.5
    # With random weights nothing can be measured: allow lossy candidates anyway (marked).
    allow_unverified: bool = False
    # A text file to cut the prompts from (None: the public-domain text shipped with kvopt).
    prompts: str | None = None
    n_prompts: int = 4
    # Tokens generated per prompt: the profile's new_tokens, at most this many.
    new_tokens: int = 32


# The QualityConfig fields a profile may override.
QUALITY_BOUNDS = ("max_mean_kl", "min_token_agreement")


@dataclass(frozen=True)
class EngineConfig:
    """Which inference engine the study tunes, and its knobs' choices (the Transformers engine
    takes its choices from ``search_space``; another engine lists them under ``knobs``).

    Names and values of ``knobs`` are checked by the engine itself, before any work starts.
    """

    name: str = "transformers"
    knobs: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class KvoptConfig:
    """The whole validated configuration of one run; build it with :func:`validate` or ``kvopt.compose_config``."""

    model: ModelConfig
    profile: ProfileConfig
    search_space: SearchSpaceConfig
    sampler: SamplerConfig
    storage: StorageConfig
    study: StudyConfig
    device: str
    seed: int
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    confirm: ConfirmConfig = field(default_factory=ConfirmConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    # This process's index among workers sharing a study; never part of the study name.
    worker: int = 0
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    # The profile's own quality bounds applied over the quality section's.
    quality: QualityConfig = field(default_factory=QualityConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class _Problems:
    """Collects every validation problem so the user sees them all at once."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, given: Any, allowed: str) -> None:
        self.items.append(f"{key}: got {given!r}; allowed: {allowed}")

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool_choices(problems: _Problems, key: str, given: Any) -> list[bool]:
    """An on/off option's choices: true, false or a non-empty list of them ([False] after a problem)."""
    choices = [given] if isinstance(given, bool) else given
    if not isinstance(choices, (list, tuple)) or not choices or any(not isinstance(c, bool) for c in choices):
        problems.add(key, given, "a list of true/false")
        return [False]
    return list(choices)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(float(value))


def _choices(problems: _Problems, section: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    value = section.get(key)
    full_key = f"search_space.{key}"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        problems.add(full_key, value, f"a non-empty list of {', '.join(allowed)}")
        return ()
    bad = [v for v in value if v not in allowed]
    if bad:
        problems.add(full_key, bad if len(bad) > 1 else bad[0], ", ".join(allowed))
        return ()
    return tuple(dict.fromkeys(value))  # drop repeats, keep order


def _positive_int(problems: _Problems, key: str, value: Any, minimum: int = 1) -> int:
    if not _is_int(value) or value < minimum:
        problems.add(key, value, f"an integer >= {minimum}")
        return minimum
    return int(value)


def _model(problems: _Problems, m: Mapping[str, Any]) -> ModelConfig:
    for key in ("name", "hub_id"):
        if not isinstance(m.get(key), str) or not m.get(key):
            problems.add(f"model.{key}", m.get(key), "a non-empty string")
    if m.get("weights") not in WEIGHTS_MODES:
        problems.add("model.weights", m.get("weights"), ", ".join(WEIGHTS_MODES))
    if not isinstance(m.get("trust_remote_code"), bool):
        problems.add("model.trust_remote_code", m.get("trust_remote_code"), "true or false")
    if m.get("dtype") not in DTYPES:
        problems.add("model.dtype", m.get("dtype"), ", ".join(DTYPES))
    arch = m.get("architecture")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("model_type"), str):
        problems.add(
            "model.architecture",
            arch,
            "a mapping of config.json fields with at least model_type",
        )
        arch = {"model_type": "unknown"}
    return ModelConfig(
        name=str(m.get("name")),
        hub_id=str(m.get("hub_id")),
        revision=str(m.get("revision") or "main"),
        weights=str(m.get("weights")),
        trust_remote_code=bool(m.get("trust_remote_code")),
        dtype=str(m.get("dtype")),
        architecture=dict(arch),
        gguf=None if m.get("gguf") is None else str(m.get("gguf")),
    )


def _engine(problems: _Problems, e: Mapping[str, Any], model: Mapping[str, Any]) -> EngineConfig:
    if not isinstance(e, Mapping):
        problems.add("engine", e, "a config group: engine=transformers or engine=llamacpp")
        return EngineConfig()
    name = e.get("name", "transformers")
    if name not in ENGINE_NAMES:
        problems.add("engine", name, ", ".join(ENGINE_NAMES))
        return EngineConfig()
    knobs = e.get("knobs") or {}
    if not isinstance(knobs, Mapping) or any(
        v != "auto" and (not isinstance(v, (list, tuple)) or not v) for v in knobs.values()
    ):
        problems.add("engine.knobs", knobs, "a mapping of knob name -> a non-empty list of values, or auto")
        knobs = {}
    gguf = model.get("gguf") if isinstance(model, Mapping) else None
    if name == "llamacpp" and not gguf:
        problems.add("model.gguf", gguf, "the path of a .gguf file (engine=llamacpp tunes a GGUF model)")
    if name != "llamacpp" and gguf:
        problems.add("model.gguf", gguf, f"null with engine={name} (a GGUF file is tuned with engine=llamacpp)")
    return EngineConfig(
        name=str(name), knobs={str(k): ("auto",) if v == "auto" else tuple(v) for k, v in knobs.items()}
    )


def _lengths(problems: _Problems, key: str, value: Any, minimum: int) -> list[int]:
    if _is_int(value):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or any(not _is_int(v) or v < minimum for v in value):
        problems.add(key, value, f"a non-empty list of integers >= {minimum}")
        return []
    return list(dict.fromkeys(value))


def _explicit_shapes(problems: _Problems, value: Any) -> list[Shape]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, Mapping) for v in value):
        problems.add("profile.shapes", value, "a non-empty list of {prompt_tokens, new_tokens, share}")
        return []
    shapes = []
    for i, v in enumerate(value):
        prompt = _positive_int(problems, f"profile.shapes[{i}].prompt_tokens", v.get("prompt_tokens"))
        new = _positive_int(problems, f"profile.shapes[{i}].new_tokens", v.get("new_tokens"), minimum=2)
        share = v.get("share", 1.0)
        if not _is_number(share) or share <= 0:
            problems.add(f"profile.shapes[{i}].share", share, "a number > 0 (shares are normalised to sum to 1)")
            share = 1.0
        shapes.append(Shape(prompt, new, float(share)))
    return shapes


def _profile_shapes(problems: _Problems, p: Mapping[str, Any], model: Mapping[str, Any]) -> tuple[Shape, ...]:
    """The mix, from the first of: shapes, traffic_file, context_lengths x output_lengths, prompt/new tokens."""
    shapes: list[Shape] = []
    if p.get("shapes") is not None:
        shapes = _explicit_shapes(problems, p.get("shapes"))
    elif p.get("traffic_file") is not None:
        path = p.get("traffic_file")
        if not isinstance(path, str) or not path:
            problems.add("profile.traffic_file", path, "a CSV or JSONL file of prompt_tokens,new_tokens pairs")
        else:
            counter = tokenizer_counter(
                str(model.get("hub_id")), str(model.get("revision") or "main"), model.get("trust_remote_code") is True
            )
            try:
                shapes = [Shape(*shape) for shape in shapes_from_requests(read_requests(path, counter))]
            except ConfigError as exc:
                problems.items.extend(exc.problems)
    elif p.get("context_lengths") is not None or p.get("output_lengths") is not None:
        # Every context length with every output length, each an equal share (kvcache-autotune's mix).
        contexts = _lengths(problems, "profile.context_lengths", p.get("context_lengths"), 1)
        outputs = _lengths(problems, "profile.output_lengths", p.get("output_lengths"), 2)
        shapes = [Shape(c, o) for c in contexts for o in outputs]
    elif p.get("prompt_tokens") is not None or p.get("new_tokens") is not None:  # one shape (older studies)
        prompt = _positive_int(problems, "profile.prompt_tokens", p.get("prompt_tokens"))
        # Decode throughput needs at least one token after the first.
        new = _positive_int(problems, "profile.new_tokens", p.get("new_tokens"), minimum=2)
        shapes = [Shape(prompt, new)]
    elif "traffic_file" in p:
        problems.add("profile.traffic_file", None, "a CSV or JSONL file of prompt_tokens,new_tokens pairs")
    else:
        problems.add(
            "profile",
            None,
            "context_lengths and output_lengths, a shapes list, a traffic_file, or prompt_tokens and new_tokens",
        )
    total = sum(s.share for s in shapes)
    return tuple(Shape(s.prompt_tokens, s.new_tokens, s.share / total) for s in shapes)


def _profile(problems: _Problems, p: Mapping[str, Any], model: Mapping[str, Any] | None = None) -> ProfileConfig:
    shapes = _profile_shapes(problems, p, model or {})
    prefix = p.get("shared_prefix_tokens", 0)
    if not _is_int(prefix) or prefix < 0:
        problems.add("profile.shared_prefix_tokens", prefix, "an integer >= 0 (0: no shared prefix)")
        prefix = 0
    # The first warm-up run also measures memory, so at least one is needed.
    warmup = _positive_int(problems, "profile.warmup", p.get("warmup"))
    reps = _positive_int(problems, "profile.repetitions", p.get("repetitions"))
    n_trials = _positive_int(problems, "profile.n_trials", p.get("n_trials"))

    weights_in = p.get("weights") or {}
    weights: dict[str, float] = {}
    unknown = sorted(set(weights_in) - set(METRICS))
    if unknown:
        problems.add("profile.weights", unknown, f"keys {', '.join(METRICS)}")
    for metric in METRICS:
        w = weights_in.get(metric, 0.0)
        if not _is_number(w) or w < 0:
            problems.add(f"profile.weights.{metric}", w, "a number >= 0")
            w = 0.0
        weights[metric] = float(w)
    total = sum(weights.values())
    if not unknown and abs(total - 1.0) > 1e-6:
        problems.add(
            "profile.weights",
            {k: v for k, v in weights.items()},
            f"weights that sum to 1 (these sum to {total:g})",
        )

    slo_in = p.get("slo") or {}
    slo: dict[str, float | None] = {}
    unknown_slo = sorted(set(slo_in) - set(SLO_KEYS))
    if unknown_slo:
        problems.add("profile.slo", unknown_slo, f"keys {', '.join(SLO_KEYS)}")
    for key in SLO_KEYS:
        v = slo_in.get(key)
        if v is not None and (not _is_number(v) or v <= 0):
            problems.add(f"profile.slo.{key}", v, "null or a number > 0")
            v = None
        slo[key] = None if v is None else float(v)
    return ProfileConfig(
        name=str(p.get("name")),
        shapes=shapes,
        warmup=warmup,
        repetitions=reps,
        n_trials=n_trials,
        weights=weights,
        slo=slo,
        shared_prefix_tokens=int(prefix),
        traffic_file=p.get("traffic_file") if isinstance(p.get("traffic_file"), str) else None,
    )


def _search_space(problems: _Problems, s: Mapping[str, Any]) -> SearchSpaceConfig:
    caches = _choices(problems, s, "cache_implementation", CACHE_IMPLEMENTATIONS)
    attns = _choices(problems, s, "attn_implementation", ATTN_IMPLEMENTATIONS)
    dtypes = _choices(problems, s, "dtype", DTYPES)
    batches_in = s.get("batch_size")
    if _is_int(batches_in):
        batches_in = [batches_in]
    batches: tuple[int, ...] = ()
    if not isinstance(batches_in, (list, tuple)) or not batches_in:
        problems.add("search_space.batch_size", batches_in, "a non-empty list of integers >= 1")
    else:
        bad = [b for b in batches_in if not _is_int(b) or b < 1]
        if bad:
            problems.add("search_space.batch_size", bad[0], "integers >= 1")
        else:
            batches = tuple(sorted(set(batches_in)))
    quant = s.get("quantized") or {}
    backends_in = quant.get("backends", "auto")
    auto = backends_in == "auto"
    backends = QUANTIZED_BACKENDS if auto else backends_in
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, (list, tuple)) or not backends or any(b not in QUANTIZED_BACKENDS for b in backends):
        problems.add(
            "search_space.quantized.backends", backends_in, f"auto, or a list of {', '.join(QUANTIZED_BACKENDS)}"
        )
        backends = ("fp8",)
    nbits_in = quant.get("nbits", [4])
    nbits = [nbits_in] if _is_int(nbits_in) else nbits_in
    if not isinstance(nbits, (list, tuple)) or not nbits or any(n not in (1, 2, 3, 4, 8) for n in nbits):
        problems.add("search_space.quantized.nbits", nbits_in, "a list of 1, 2, 3, 4, 8 (quanto takes 2 and 4)")
        nbits = [4]
    compile_in = (s.get("static") or {}).get("compile", [False])
    compile_choices = _bool_choices(problems, "search_space.static.compile", compile_in)
    if any(compile_choices) and not any(c in caches for c in ("static", "offloaded_static")):
        problems.add(
            "search_space.static.compile",
            compile_in,
            "[false] unless cache_implementation lists static or offloaded_static (compile applies to static caches)",
        )
    reuse_choices = _bool_choices(
        problems, "search_space.dynamic.prefix_reuse", (s.get("dynamic") or {}).get("prefix_reuse", [False])
    )
    slowdown = s.get("max_dtype_slowdown")
    if slowdown is not None and (not _is_number(slowdown) or slowdown <= 1):
        problems.add("search_space.max_dtype_slowdown", slowdown, "null or a number > 1")
        slowdown = None
    return SearchSpaceConfig(
        name=str(s.get("name", "custom")),
        cache_implementation=caches,
        attn_implementation=attns,
        dtype=dtypes,
        batch_size=batches,
        quantized_backends=tuple(dict.fromkeys(backends)),
        quantized_backends_auto=auto,
        quantized_nbits=tuple(dict.fromkeys(nbits)),
        static_compile=tuple(dict.fromkeys(compile_choices)),
        prefix_reuse=tuple(dict.fromkeys(reuse_choices)),
        max_dtype_slowdown=None if slowdown is None else float(slowdown),
    )


def _sampler(problems: _Problems, s: Mapping[str, Any]) -> SamplerConfig:
    name = s.get("name")
    if name not in SAMPLERS:
        problems.add("sampler.name", name, ", ".join(SAMPLERS))
    startup = s.get("n_startup_trials")
    if startup is not None:
        startup = _positive_int(problems, "sampler.n_startup_trials", startup)
    population = s.get("population_size")
    if population is not None:
        population = _positive_int(problems, "sampler.population_size", population, minimum=2)
    front_every = s.get("front_every")
    if front_every is not None:
        front_every = _positive_int(problems, "sampler.front_every", front_every, minimum=0)
    return SamplerConfig(name=str(name), n_startup_trials=startup, population_size=population, front_every=front_every)


def _storage(problems: _Problems, s: Mapping[str, Any]) -> StorageConfig:
    backend = s.get("backend")
    url = s.get("url")
    if backend not in STORAGE_BACKENDS:
        problems.add("storage.backend", backend, ", ".join(STORAGE_BACKENDS))
    elif backend == "memory" and url:
        problems.add("storage.url", url, "null with storage=memory (use storage=sqlite to keep results)")
    elif backend != "memory" and (not isinstance(url, str) or not url):
        problems.add(
            "storage.url",
            url,
            "an Optuna storage URL (sqlite:///file.db, postgresql://…)" if backend == "rdb" else "a journal file path",
        )
    elif backend == "rdb" and "://" not in str(url):
        problems.add("storage.url", url, "a database URL such as sqlite:///kvopt.db or postgresql://host/db")
    return StorageConfig(backend=str(backend), url=None if url is None else str(url))


def _study(problems: _Problems, s: Mapping[str, Any]) -> StudyConfig:
    name = s.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        problems.add("study.name", name, "null (derived) or a non-empty string")
        name = None
    n_trials = _positive_int(problems, "study.n_trials", s.get("n_trials"))
    timeout = s.get("timeout")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        problems.add("study.timeout", timeout, "null or a number of seconds > 0")
        timeout = None
    converge = s.get("converge", True)
    if not isinstance(converge, bool):
        problems.add("study.converge", converge, "true or false")
        converge = True
    warm = s.get("warm_start")
    if warm is not None and (not isinstance(warm, str) or not warm.strip() or warm.startswith("@")):
        problems.add("study.warm_start", warm, "null, STUDY or STUDY@STORAGE_URL")
        warm = None
    budget = parse_duration(s.get("budget"))
    if budget is not None and budget <= 0:
        problems.add("study.budget", s.get("budget"), "null or a duration such as 300, 300s, 5m or 1h (> 0)")
        budget = None
    return StudyConfig(
        name=name,
        n_trials=n_trials,
        timeout=None if timeout is None else float(timeout),
        converge=converge,
        warm_start=warm,
        budget=budget,
    )


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from ``300``, ``"300s"``, ``"5m"`` or ``"1h"``; None for null; -1.0 for anything else (invalid)."""
    if value is None:
        return None
    if _is_number(value):
        return float(value)
    text = str(value).strip().lower()
    number, unit = text[:-1], text[-1:]
    if unit in _DURATION_UNITS:
        try:
            return float(number) * _DURATION_UNITS[unit]
        except ValueError:
            return -1.0
    return -1.0


def _positive_number(problems: _Problems, key: str, value: Any, default: float) -> float:
    if not _is_number(value) or value <= 0:
        problems.add(key, value, "a number > 0")
        return default
    return float(value)


# The defaults of the sections that have them are the dataclasses' (conf/config.yaml states
# the same values for Hydra and --help; tests/test_config.py checks that the two agree).


def _measure(problems: _Problems, m: Mapping[str, Any]) -> MeasureConfig:
    default = MeasureConfig()
    adaptive = m.get("adaptive", default.adaptive)
    if not isinstance(adaptive, bool):
        problems.add("measure.adaptive", adaptive, "true or false")
        adaptive = default.adaptive
    rel = m.get("rel_precision", default.rel_precision)
    if not _is_number(rel) or not 0 < rel < 1:
        problems.add("measure.rel_precision", rel, "a fraction between 0 and 1 (0.05 = ±5%)")
        rel = default.rel_precision
    repetitions = m.get("max_repetitions", default.max_repetitions)
    max_seconds = m.get("max_seconds", default.max_seconds)
    window = m.get("decode_window", default.decode_window)
    if not _is_int(window) or window < 0:
        problems.add("measure.decode_window", window, "an integer >= 0 (decode steps per window; 0: whole calls)")
        window = default.decode_window
    return MeasureConfig(
        adaptive=adaptive,
        rel_precision=float(rel),
        max_repetitions=_positive_int(problems, "measure.max_repetitions", repetitions),
        max_seconds=_positive_number(problems, "measure.max_seconds", max_seconds, default.max_seconds),
        decode_window=int(window),
    )


def _trial(problems: _Problems, t: Mapping[str, Any]) -> TrialConfig:
    default = TrialConfig()
    isolation = t.get("isolation", default.isolation)
    if isolation not in ISOLATION_MODES:
        problems.add("trial.isolation", isolation, ", ".join(ISOLATION_MODES))
        isolation = default.isolation
    timeout = _positive_number(problems, "trial.timeout_s", t.get("timeout_s", default.timeout_s), default.timeout_s)
    return TrialConfig(isolation=str(isolation), timeout_s=timeout)


def _pruning(problems: _Problems, p: Mapping[str, Any]) -> PruningConfig:
    default = PruningConfig()
    budget = p.get("memory_budget_mb", default.memory_budget_mb)
    if budget is not None and (not _is_number(budget) or budget <= 0):
        problems.add("pruning.memory_budget_mb", budget, "null (what the device has free) or a number of MB > 0")
        budget = default.memory_budget_mb
    dominated = p.get("dominated", default.dominated)
    if not isinstance(dominated, bool):
        problems.add("pruning.dominated", dominated, "true or false")
        dominated = default.dominated
    return PruningConfig(memory_budget_mb=None if budget is None else float(budget), dominated=dominated)


def _confirm(problems: _Problems, c: Mapping[str, Any]) -> ConfirmConfig:
    default = ConfirmConfig()
    top_k = c.get("top_k", default.top_k)
    if not _is_int(top_k) or top_k < 0:
        problems.add("confirm.top_k", top_k, "an integer >= 0")
        top_k = default.top_k
    rounds = c.get("rounds", default.rounds)
    if not _is_int(rounds) or rounds < 0:
        problems.add("confirm.rounds", rounds, "an integer >= 0 (0 turns confirmation off)")
        rounds = default.rounds
    max_seconds = c.get("max_seconds", default.max_seconds)
    equivalence = c.get("equivalence", default.equivalence)
    if not _is_number(equivalence) or not 0 <= equivalence < 1:
        problems.add("confirm.equivalence", equivalence, "a profile-score difference >= 0 and < 1 (0.02 = about 2%)")
        equivalence = default.equivalence
    return ConfirmConfig(
        top_k=int(top_k),
        rounds=int(rounds),
        max_seconds=_positive_number(problems, "confirm.max_seconds", max_seconds, default.max_seconds),
        equivalence=float(equivalence),
    )


def _worker(problems: _Problems, value: Any) -> int:
    if not _is_int(value) or value < 0:
        problems.add("worker", value, "an integer >= 0 (this worker's index)")
        return 0
    return int(value)


def _scale(problems: _Problems, s: Mapping[str, Any]) -> ScaleConfig:
    default = ScaleConfig()
    policy = s.get("shared_device", default.shared_device)
    if policy not in SHARED_DEVICE_POLICIES:
        problems.add("scale.shared_device", policy, ", ".join(SHARED_DEVICE_POLICIES))
        policy = default.shared_device
    lock_dir = s.get("lock_dir", default.lock_dir)
    if lock_dir is not None and (not isinstance(lock_dir, str) or not lock_dir):
        problems.add("scale.lock_dir", lock_dir, "null (the system temp folder) or a folder path")
        lock_dir = default.lock_dir
    heartbeat = _positive_int(problems, "scale.heartbeat_s", s.get("heartbeat_s", default.heartbeat_s))
    grace = _positive_int(problems, "scale.grace_s", s.get("grace_s", default.grace_s))
    if grace <= heartbeat:
        problems.add("scale.grace_s", grace, f"more seconds than scale.heartbeat_s ({heartbeat})")
    retry = s.get("max_retry", default.max_retry)
    if not _is_int(retry) or retry < 0:
        problems.add("scale.max_retry", retry, "an integer >= 0 (0: never re-queue)")
        retry = default.max_retry
    return ScaleConfig(
        shared_device=str(policy),
        lock_dir=lock_dir,
        heartbeat_s=heartbeat,
        grace_s=grace,
        max_retry=int(retry),
    )


def _bound(problems: _Problems, key: str, value: Any, upper: float | None) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value < 0 or (upper is not None and value > upper):
        problems.add(key, value, "null (no bound) or a number >= 0" + (f" and <= {upper:g}" if upper else ""))
        return None
    return float(value)


_BOUND_LIMITS = {"max_mean_kl": None, "min_token_agreement": 1.0}


def _quality(problems: _Problems, q: Mapping[str, Any], profile: Mapping[str, Any]) -> QualityConfig:
    default = QualityConfig()
    known = {f.name for f in dataclasses.fields(QualityConfig)}
    unknown = sorted(set(q) - known)
    if unknown:
        problems.add("quality", unknown, f"keys {', '.join(sorted(known))}")
    bounds = {
        k: _bound(problems, f"quality.{k}", q.get(k, getattr(default, k)), _BOUND_LIMITS[k]) for k in QUALITY_BOUNDS
    }
    own = profile.get("quality") or {}
    if not isinstance(own, Mapping) or set(own) - set(QUALITY_BOUNDS):
        problems.add("profile.quality", own, f"a mapping of {', '.join(QUALITY_BOUNDS)}")
        own = {}
    for k, v in own.items():
        bounds[k] = _bound(problems, f"profile.quality.{k}", v, _BOUND_LIMITS[k])
    allow = q.get("allow_unverified", default.allow_unverified)
    if not isinstance(allow, bool):
        problems.add("quality.allow_unverified", allow, "true or false")
        allow = default.allow_unverified
    prompts = q.get("prompts", default.prompts)
    if prompts is not None and (not isinstance(prompts, str) or not Path(prompts).is_file()):
        problems.add("quality.prompts", prompts, "null (the text shipped with kvopt) or a path to a text file")
        prompts = None
    return QualityConfig(
        allow_unverified=allow,
        prompts=prompts,
        n_prompts=_positive_int(problems, "quality.n_prompts", q.get("n_prompts", default.n_prompts)),
        new_tokens=_positive_int(problems, "quality.new_tokens", q.get("new_tokens", default.new_tokens), minimum=2),
        **bounds,
    )


def validate_profile(section: Mapping[str, Any]) -> ProfileConfig:
    """One ``profile`` section (e.g. read back from a stored study); ConfigError if invalid."""
    problems = _Problems()
    profile = _profile(problems, section)
    problems.raise_if_any()
    return profile


def validate(cfg: DictConfig | Mapping[str, Any]) -> KvoptConfig:
    """Validate a composed config; raise :class:`ConfigError` listing every problem."""
    raw: dict[str, Any]
    if isinstance(cfg, DictConfig):
        try:
            raw = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except Exception as exc:  # an interpolation that cannot resolve
            raise ConfigError([f"config: cannot resolve a value ({exc})"]) from None
    else:
        raw = dict(cfg)
    problems = _Problems()
    sections = {}
    for key in ("model", "profile", "search_space", "sampler", "storage", "study"):
        section = raw.get(key)
        if not isinstance(section, Mapping):
            problems.add(key, section, "a config group (see python -m kvopt --help)")
            section = {}
        sections[key] = section
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        problems.add("device", device, "auto, cpu, cuda, cuda:N or mps")
    seed = raw.get("seed", 0)
    if not _is_int(seed) or seed < 0:
        problems.add("seed", seed, "an integer >= 0")
        seed = 0
    result = KvoptConfig(
        model=_model(problems, sections["model"]),
        profile=_profile(problems, sections["profile"], sections["model"]),
        search_space=_search_space(problems, sections["search_space"]),
        sampler=_sampler(problems, sections["sampler"]),
        storage=_storage(problems, sections["storage"]),
        study=_study(problems, sections["study"]),
        device=str(device),
        seed=int(seed),
        measure=_measure(problems, raw.get("measure") or {}),
        trial=_trial(problems, raw.get("trial") or {}),
        confirm=_confirm(problems, raw.get("confirm") or {}),
        pruning=_pruning(problems, raw.get("pruning") or {}),
        worker=_worker(problems, raw.get("worker", KvoptConfig.worker)),
        scale=_scale(problems, raw.get("scale") or {}),
        quality=_quality(problems, raw.get("quality") or {}, sections["profile"]),
        engine=_engine(problems, raw.get("engine") or {}, sections["model"]),
        raw=raw,
    )
    problems.raise_if_any()
    # The resolved mix is what the study ran: stored with it, so a report needs no traffic file.
    raw["profile"] = {**raw["profile"], "shapes": [vars(s) for s in result.profile.shapes]}
    return result
