"""The Transformers engine: ``generate`` with a candidate's cache, attention, dtype and batch.

Binds this folder's parts to the engine interface (:mod:`kvopt.engines.base`): the probe
and the configured space, the loader, the timed calls of one candidate (a session), the
fidelity meter, the memory model and the settings export.
"""

from __future__ import annotations

from typing import Any

import torch

from kvopt.config import KvoptConfig, ModelConfig, QualityConfig
from kvopt.engines.base import (
    Engine,
    FidelityMeter,
    Loaded,
    Loader,
    MemoryPrediction,
    ScriptContext,
    Session,
    WeightsSource,
)
from kvopt.engines.transformers import export
from kvopt.engines.transformers.candidate import Candidate, space_from_config
from kvopt.engines.transformers.fidelity import TransformersFidelityMeter
from kvopt.engines.transformers.generation import GenerateRun, timed_generate
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.engines.transformers.predict import activation_bytes, predict_memory, shape_of_config
from kvopt.engines.transformers.prefix import prepare_prefix
from kvopt.engines.transformers.probe import backend_missing, default_attn_implementation, probe
from kvopt.engines.transformers.source import resolve_config
from kvopt.engines.transformers.window import DecodeWindow, fill_window_context
from kvopt.engines.transformers.workload import make_inputs
from kvopt.errors import ConfigError
from kvopt.measure.memory import MemoryReading, measure_peak, storage_bytes, weights_bytes
from kvopt.space import Candidate as AnyCandidate
from kvopt.space import SearchSpace
from kvopt.workload import WindowPlacement, Workload, WorkloadMix

__all__ = ["TransformersEngine", "TransformersSession", "TransformersLoader"]


def _model_key(candidate: AnyCandidate) -> tuple[str, str]:
    """One loaded model per dtype and attention backend (the other settings are per call)."""
    assert isinstance(candidate, Candidate)
    return (candidate.dtype, candidate.attn_implementation)


class TransformersLoader(Loader):
    """The engine's :class:`~kvopt.engines.transformers.loading.ModelLoader`: one model per (dtype, attention)."""

    def __init__(self, loader: ModelLoader) -> None:
        self.inner = loader
        self.model_cfg = loader.model_cfg
        self.source = loader.source

    def get(self, candidate: AnyCandidate) -> tuple[Loaded, bool]:
        dtype, attn = _model_key(candidate)
        loaded, reused = self.inner.get(dtype, attn)
        return Loaded(loaded.model, (dtype, attn), loaded.weights, loaded.load_s), reused

    def release(self) -> None:
        self.inner.release()


class TransformersSession(Session):
    """One candidate's timed ``generate`` calls on one workload shape (its prompts made once)."""

    def __init__(self, model: Any, candidate: Candidate, workload: Workload, seed: int, device: torch.device) -> None:
        self.model, self.candidate, self.workload, self.seed, self.device = model, candidate, workload, seed, device
        self.batch_size = candidate.batch_size
        self.inputs = make_inputs(workload, candidate.batch_size, model.config.vocab_size, seed, device)
        # Setup, as a server does once per system prompt: the shared prefix's cache (prefix.py).
        self.prefix = prepare_prefix(model, candidate, workload, self.inputs, device)
        self.weights_bytes = weights_bytes(model)
        self.resident_bytes = (
            self.weights_bytes + storage_bytes(self.inputs.values()) + (self.prefix.nbytes if self.prefix else 0)
        )
        # On CUDA the allocator's peak counters cost nothing to read.
        self.free_peak = device.type == "cuda"

    def call(self, new_tokens: int, deadline_s: float | None = None) -> GenerateRun:
        return timed_generate(
            self.model, self.inputs, self.candidate, new_tokens, self.device, deadline_s=deadline_s, prefix=self.prefix
        )

    def call_with_peak(self, new_tokens: int, deadline_s: float | None = None) -> tuple[GenerateRun, MemoryReading]:
        result, reading = measure_peak(lambda: self.call(new_tokens, deadline_s), self.device, self.resident_bytes)
        if self.candidate.cache_implementation == "paged" and self.device.type != "cuda":
            reading = self._with_paged_worker(reading, result.kv_bytes)
        return result, reading

    def _with_paged_worker(self, memory: MemoryReading, pool_bytes: int) -> MemoryReading:
        """Add what the CPU profiler cannot see: the paged pool and the prefill of its worker thread.

        Continuous batching runs the model in a background thread, and torch's profiler
        records allocations of the thread that started it only. The pool is read from its
        tensor (measured); the prefill's transient tensors come from the memory model
        (derived), the same term predicted for every other cache, so candidates compare fairly.
        On CUDA the allocator's peak covers every thread: nothing is added there.
        """
        model = self.model
        shape = shape_of_config(model.config, sum(p.numel() for p in model.parameters()))
        activations = activation_bytes(shape, self.candidate, self.workload.prompt_tokens)
        details = {**memory.details, "paged_pool_bytes": pool_bytes, "paged_activation_bytes_derived": activations}
        return MemoryReading(
            peak_bytes=memory.peak_bytes + pool_bytes + activations,
            method=memory.method + " + paged pool (read from its tensor) + prefill activations (memory model)",
            details=details,
        )

    def window(self, where: WindowPlacement) -> DecodeWindow:
        length = max(self.workload.prompt_tokens, where.context_tokens + 1)
        longer = Workload(prompt_tokens=length, new_tokens=self.workload.new_tokens)
        ids = make_inputs(longer, self.batch_size, self.model.config.vocab_size, self.seed, self.device)["input_ids"]
        full = self.workload.prompt_tokens + self.workload.new_tokens
        return fill_window_context(self.model, self.candidate, ids, where, full, self.device)

    def attrs(self) -> dict[str, Any]:
        return self.prefix.as_attrs() if self.prefix else {}


class TransformersEngine(Engine):
    """Transformers' ``generate``: cache implementation, attention backend, dtype, batch size."""

    name = "transformers"
    candidate_type = Candidate
    YAML_HINT = "# recommended.model_kwargs -> from_pretrained, recommended.generate_kwargs -> generate;\n"

    @classmethod
    def resolve(cls, cfg: KvoptConfig) -> tuple[KvoptConfig, WeightsSource]:
        return resolve_config(cfg)

    @classmethod
    def check_config(cls, cfg: KvoptConfig) -> None:
        """Quantized backends named explicitly must be installed (``auto`` just skips missing ones)."""
        from kvopt.config import QUANTIZED_BACKENDS

        space = cfg.search_space
        if space.quantized_backends_auto or "quantized" not in space.cache_implementation:
            return
        missing = {b: why for b in space.quantized_backends if (why := backend_missing(b))}
        if missing:
            installed = [b for b in QUANTIZED_BACKENDS if not backend_missing(b)]
            raise ConfigError(
                [
                    f"search_space.quantized.backends: got {b!r} but {why}; allowed here: auto, {', '.join(installed)}"
                    for b, why in missing.items()
                ]
            )

    def baseline(self) -> Candidate:
        """What Transformers does when the user changes nothing."""
        return Candidate(
            cache_implementation="dynamic",
            attn_implementation=default_attn_implementation(self.model, self.device),
            dtype=self.model.dtype,
            batch_size=1,
        )

    def search_space(self, mix: WorkloadMix) -> SearchSpace:
        cfg = self.cfg
        baseline = self.baseline()
        choices = {
            "cache_implementation": list(cfg.search_space.cache_implementation),
            "attn_implementation": list(cfg.search_space.attn_implementation),
            "dtype": list(cfg.search_space.dtype),
        }
        probed = probe(
            self.model,
            self.device,
            choices,
            baseline,
            cfg.search_space.quantized_backends,
            cfg.search_space.max_dtype_slowdown,
        )
        share = mix.shared_prefix_tokens / mix.trial.prompt_tokens
        return space_from_config(cfg.search_space, baseline, probed.unavailable, share)

    def describe_model(self) -> str:
        m = self.model
        return f"{m.name} ({m.hub_id}), {self.weights.kind} weights: {self.weights.reason}" + (
            ", trust_remote_code=true (runs the model's own code)" if m.trust_remote_code else ""
        )

    def loader(self) -> TransformersLoader:
        return TransformersLoader(ModelLoader(self.model, self.weights, self.device, self.seed))

    def model_key(self, candidate: AnyCandidate) -> tuple[Any, ...]:
        return _model_key(candidate)

    def session(self, loaded: Loaded, candidate: AnyCandidate, workload: Workload, seed: int) -> TransformersSession:
        assert isinstance(candidate, Candidate)
        return TransformersSession(loaded.model, candidate, workload, seed, self.device)

    def whole_calls_reason(self, candidate: AnyCandidate) -> str | None:
        """Caches whose decode steps are not one fixed loop that a copied cache repeats."""
        assert isinstance(candidate, Candidate)
        if candidate.cache_implementation == "paged":
            return "paged: continuous batching schedules its own steps"
        if candidate.compile:
            return "static+compile: compiling is part of the set-up and the compiled loop is timed whole"
        if candidate.cache_implementation == "quantized":
            return "quantized: the cache is re-quantized every residual_length tokens, so steps are not alike"
        if candidate.cache_implementation.startswith("offloaded"):
            return (
                "offloaded: layers are prefetched across steps; a copied offloaded cache is not checked to decode alike"
            )
        return None

    def capabilities(self) -> tuple[str, list[tuple[str, str | None]]]:
        """Every cache, attention backend and dtype Transformers knows, probed here."""
        from kvopt.config import ATTN_IMPLEMENTATIONS, CACHE_IMPLEMENTATIONS, DTYPES, QUANTIZED_BACKENDS

        baseline = self.baseline()
        choices = {
            "cache_implementation": list(CACHE_IMPLEMENTATIONS),
            "attn_implementation": list(ATTN_IMPLEMENTATIONS),
            "dtype": list(DTYPES),
        }
        slowdown = self._cfg.search_space.max_dtype_slowdown if self._cfg else None
        result = probe(self.model, self.device, choices, baseline, QUANTIZED_BACKENDS, slowdown)
        rows: list[tuple[str, str | None]] = [(key, None) for key in result.available]
        rows += list(result.unavailable.items())
        return f"baseline: {baseline.label}", rows

    def prefix_reuse_note(self, space: SearchSpace) -> str:
        if space.offers("prefix_reuse", True):
            return "dynamic+prefix candidates fill its cache once and copy it into each call (docs/profiles.md)"
        return "not reused: search_space.dynamic.prefix_reuse does not offer it"

    def protocol_note(self) -> str:
        return "whole calls for paged, compiled static, quantized and offloaded caches"

    def fidelity_meter(
        self, loader: Loader, baseline: AnyCandidate, quality: QualityConfig, prompt_tokens: int, new_tokens: int
    ) -> FidelityMeter:
        assert isinstance(loader, TransformersLoader) and isinstance(baseline, Candidate)
        return TransformersFidelityMeter(loader.inner, baseline, quality, prompt_tokens, new_tokens)

    def predict_memory(self, candidate: AnyCandidate, workload: Workload) -> MemoryPrediction:
        assert isinstance(candidate, Candidate)
        return predict_memory(self.model, candidate, workload)

    def peak_scales_with_model(self, candidate: AnyCandidate) -> bool:
        """The paged pool is sized from free memory and its worker's peak read apart: always measured."""
        assert isinstance(candidate, Candidate)
        return candidate.cache_implementation != "paged"

    @classmethod
    def settings_entry(cls, candidate: AnyCandidate, workload: Workload) -> dict[str, Any]:
        assert isinstance(candidate, Candidate)
        return export.settings_entry(candidate, workload)

    @classmethod
    def settings_script(cls, context: ScriptContext) -> str:
        return export.settings_script(context)

    @classmethod
    def paste_snippet(cls, model: ModelConfig, candidate: AnyCandidate, workload: Workload) -> str:
        assert isinstance(candidate, Candidate)
        return export.paste_snippet(model.hub_id, candidate, workload.prompt_tokens, workload.new_tokens)


ENGINE = TransformersEngine
