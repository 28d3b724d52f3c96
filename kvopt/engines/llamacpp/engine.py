"""The llama.cpp engine: a GGUF model through llama-cpp-python, tuned like llama-server users tune it.

Binds this folder's primitives to the engine interface (:mod:`kvopt.engines.base`): the
GGUF file checked and described, the knobs the build and the model accept (tried on the
model itself, each refusal with llama.cpp's own reason), a loaded ``llama_cpp.Llama`` per
context setting, the timed calls of one candidate (a session), the fidelity meter, a
memory model and the settings export (``llama_cpp.Llama(...)`` and llama-server flags).

Memory is what llama.cpp allocates, from its own load log: weights + KV cache + compute and
output buffers (:class:`kvopt.engines.llamacpp.session.MemoryReading`); the process's peak
RSS is kept beside it in the trial's details.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvopt.config import KvoptConfig, ModelConfig, QualityConfig
from kvopt.engines.base import (
    Engine,
    FidelityMeter,
    Loaded,
    Loader,
    ScriptContext,
    Session,
    WeightsSource,
)
from kvopt.engines.llamacpp import export
from kvopt.engines.llamacpp.build import INSTALL_HINT, KV_CACHE_TYPES, build_info, cache_type_support, missing
from kvopt.engines.llamacpp.candidate import Candidate, binding_defaults, thread_counts
from kvopt.engines.llamacpp.gguf_file import read_gguf, unsupported_architecture
from kvopt.engines.llamacpp.session import (
    CallResult,
    LlamaBatchSession,
    LlamaSession,
    context_cells,
    load_report,
    next_token_logits,
    open_model,
)
from kvopt.errors import ConfigError
from kvopt.measure.fidelity import Reference, prompt_windows
from kvopt.measure.memory import MemoryReading
from kvopt.metrics import MB
from kvopt.predict import MemoryPrediction
from kvopt.quality import SHIPPED_TEXT
from kvopt.space import Candidate as AnyCandidate
from kvopt.space import SearchSpace
from kvopt.workload import WindowPlacement, Workload, WorkloadMix, make_mix

__all__ = ["LlamaCppEngine", "LlamaCppSession", "LlamaCppLoader", "ENGINE"]

# The knobs only a GPU build offers.
_GPU_KNOBS = ("n_gpu_layers", "offload_kqv")
# The context a direct use gets when no profile sized it.
_DEFAULT_CONTEXT = 2048


def _gguf_architecture(path: Path) -> dict[str, Any]:
    """The GGUF's figures, carried in the model config (a stored study and the memory model read them)."""
    gguf = read_gguf(path)
    return {
        "model_type": gguf.architecture,
        # kvopt.workload clamps the profile's lengths to this (config.json's name for it).
        "max_position_embeddings": gguf.context_length,
        "num_hidden_layers": gguf.layers,
        "num_attention_heads": gguf.heads,
        "num_key_value_heads": gguf.kv_heads,
        "head_dim": gguf.head_dim,
        "head_dim_v": gguf.head_dim_v,
        "hidden_size": gguf.embedding,
        "vocab_size": gguf.vocab_size,
        "file_bytes": gguf.file_bytes,
    }


class _Call:
    """One timed llama.cpp call, as the protocol reads it (metrics per batch, the KV bytes)."""

    def __init__(self, result: CallResult, kv_bytes: int) -> None:
        self.result = result
        self.new_tokens = result.new_tokens
        self.cut_by_deadline = result.cut_by_deadline
        self._kv_bytes = kv_bytes

    @property
    def kv_bytes(self) -> int:
        return self._kv_bytes

    def metrics(self, batch_size: int) -> dict[str, float]:
        return self.result.metrics()  # the result counts its own sequences


class _Window:
    """A filled decode window: its context is kept (a copy of llama.cpp's state) and put back before each run."""

    def __init__(self, session: LlamaSession, where: WindowPlacement) -> None:
        self.session = session
        self.where = where
        self.fill_s = session.fill_window(where.context_tokens)
        self._saved = session.save_window()

    def timed(self) -> list[float]:
        self.session.restore_window(self._saved)  # untimed: a TTFT call in between cleared the cache
        return self.session.window(self.where.steps)

    def metrics(self, steps_s: list[float]) -> dict[str, float]:
        return {"decode_tok_s": len(steps_s) / sum(steps_s)}


class LlamaCppSession(Session):
    """One candidate's timed calls on one workload shape: one sequence, or ``batch_size`` in a batched context."""

    def __init__(self, llm: Any, candidate: Candidate, workload: Workload, seed: int) -> None:
        self.llm, self.candidate, self.workload = llm, candidate, workload
        self.batch_size = candidate.batch_size
        report = load_report(llm)
        self.weights_bytes = report.model_bytes
        self.single: LlamaSession | None = None
        self.batched: LlamaBatchSession | None = None
        if candidate.batch_size == 1:
            self.single = LlamaSession(llm, workload.prompt_tokens, workload.new_tokens, seed)
            self._buffers = report.kv_buffer_bytes + report.compute_bytes + report.output_bytes
            self._kv = self.single.kv_bytes()
        else:
            self.batched = LlamaBatchSession(
                llm, candidate.batch_size, workload.prompt_tokens, workload.new_tokens, seed
            )
            own = self.batched.report  # the batched context's own buffers (the Llama's stay allocated too)
            self._buffers = (
                report.kv_buffer_bytes + report.compute_bytes + report.output_bytes
                + own.kv_buffer_bytes + own.compute_bytes + own.output_bytes
            )  # fmt: skip
            self._kv = self.batched.kv_bytes()
        # llama.cpp allocates every buffer when the context is made: all of it is held before a call.
        self.resident_bytes = self.weights_bytes + self._buffers

    def call(self, new_tokens: int, deadline_s: float | None = None) -> _Call:
        inner = self.single or self.batched
        assert inner is not None
        return _Call(inner.call(new_tokens, deadline_s), self._kv)

    def call_with_peak(self, new_tokens: int, deadline_s: float | None = None) -> tuple[_Call, MemoryReading]:
        from kvopt.measure.rss import PeakRSS

        rss_before = load_report(self.llm).rss_before_bytes
        with PeakRSS() as peak:
            result = self.call(new_tokens, deadline_s)
        reading = MemoryReading(
            peak_bytes=self.resident_bytes,
            method="llama.cpp's allocations from its load log: weights + KV cache + compute and output buffers",
            details={
                "weights_bytes": self.weights_bytes,
                "kv_cache_bytes": self._kv,
                "buffers_bytes": self._buffers,
                "resident_bytes": self.resident_bytes,
                # What the OS saw over the call, above the process before the model was opened (noisier).
                "peak_rss_above_load_bytes": max(0, peak.bytes - rss_before),
                "peak_rss_method": peak.method,
            },
        )
        return result, reading

    def window(self, where: WindowPlacement) -> _Window:
        assert self.single is not None  # batched candidates are timed on whole calls (whole_calls_reason)
        return _Window(self.single, where)

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()
            self.batched = None


class LlamaCppLoader(Loader):
    """Keeps one ``llama_cpp.Llama`` open: every context setting (cache types, batches, threads) makes a new one.

    The weights are memory-mapped, so a reload costs the context's set-up, not a copy.
    """

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine = engine
        self.model_cfg = engine.model
        self.source = engine.weights
        self._current: Loaded | None = None

    def get(self, candidate: AnyCandidate) -> tuple[Loaded, bool]:
        assert isinstance(candidate, Candidate)
        key = self.engine.model_key(candidate)
        if self._current is not None and self._current.key == key:
            return self._current, True
        self.release()
        start = time.perf_counter()
        llm = open_model(self.engine.gguf_path, candidate.settings(), self.engine.n_ctx, self.engine.seed)
        self._current = Loaded(llm, key, "pretrained", time.perf_counter() - start)
        return self._current, False

    def release(self) -> None:
        if self._current is not None:
            self._current.model.close()
            self._current = None


class LlamaCppFidelityMeter(FidelityMeter):
    """Next-token distributions of a candidate vs the baseline's (f16 cache) on real text, one prompt at a time."""

    def __init__(
        self, loader: LlamaCppLoader, baseline: Candidate, cfg: QualityConfig, prompt_tokens: int, new_tokens: int
    ) -> None:
        self.loader = loader
        self.baseline = baseline
        self.cfg = cfg
        self.prompt_tokens = prompt_tokens
        self.new_tokens = min(new_tokens, cfg.new_tokens)
        self._prompts: torch.Tensor | None = None

    def _prompts_of(self, llm: Any) -> torch.Tensor:
        if self._prompts is None:
            path = Path(self.cfg.prompts) if self.cfg.prompts else SHIPPED_TEXT
            ids = llm.tokenize(path.read_text(encoding="utf-8").encode("utf-8"), add_bos=False, special=False)
            self._prompts = prompt_windows(ids, self.prompt_tokens, self.cfg.n_prompts, path)
        return self._prompts

    def run(self, candidate: AnyCandidate, forced: torch.Tensor | None) -> Reference:
        """Next-token logits of each prompt, one sequence at a time (batches do not change them)."""
        assert isinstance(candidate, Candidate)
        llm = self.loader.get(dataclasses.replace(candidate, batch_size=1))[0].model
        prompts = self._prompts_of(llm)
        tokens, logits = [], []
        for row, prompt in enumerate(prompts.tolist()):
            force = None if forced is None else forced[row].tolist()
            made, rows = next_token_logits(llm, prompt, self.new_tokens, force)
            tokens.append(made)
            logits.append(torch.from_numpy(np.array(rows)))
        return Reference(tokens=torch.tensor(tokens, dtype=torch.long), logits=torch.stack(logits))


class LlamaCppEngine(Engine):
    """llama.cpp (llama-cpp-python) on a GGUF file: KV cache types, flash attention, batches, threads."""

    name = "llamacpp"
    candidate_type = Candidate
    YAML_HINT = "# recommended.llama_kwargs -> llama_cpp.Llama(...), recommended.cli_flags -> llama-server/llama-cli;\n"

    def __init__(
        self,
        model: ModelConfig,
        weights: WeightsSource,
        device: torch.device,
        seed: int = 0,
        cfg: KvoptConfig | None = None,
    ) -> None:
        super().__init__(model, weights, device, seed, cfg)
        self.gguf_path = Path(model.gguf or model.hub_id)
        # Every shape of the profile fits one context: its longest prompt + new tokens.
        self.n_ctx = _DEFAULT_CONTEXT
        if cfg is not None:
            self.n_ctx = max(w.prompt_tokens + w.new_tokens for w in make_mix(cfg.profile, model).shapes)

    @classmethod
    def resolve(cls, cfg: KvoptConfig) -> tuple[KvoptConfig, WeightsSource]:
        """The GGUF file: it exists, is GGUF, and this llama.cpp build can load its architecture."""
        why = missing()
        if why is not None:
            raise ConfigError([f"engine: got 'llamacpp' but {why}; allowed: transformers, or llamacpp once installed"])
        path = Path(str(cfg.model.gguf)).expanduser()
        gguf = read_gguf(path)  # ConfigError naming model.gguf: missing, not GGUF, unreadable
        refused = unsupported_architecture(gguf)
        if refused is not None:
            raise ConfigError([refused + "; allowed: a GGUF of an architecture this build loads (kvopt info)"])
        model = dataclasses.replace(
            cfg.model,
            name=path.stem,
            hub_id=str(path.resolve()),
            revision="",
            weights="pretrained",
            trust_remote_code=False,
            architecture=_gguf_architecture(path),
            gguf=str(path.resolve()),
        )
        weights = WeightsSource(
            "pretrained", f"the GGUF file's own weights ({gguf.architecture}, {gguf.file_bytes / MB:.1f} MB)"
        )
        return dataclasses.replace(cfg, model=model), weights

    @classmethod
    def check_config(cls, cfg: KvoptConfig) -> None:
        """Every ``engine.knobs`` name is a knob, and every value one it takes (auto for threads)."""
        problems = []
        knobs = {k.name: k for k in Candidate.KNOBS}
        for name, values in cfg.engine.knobs.items():
            knob = knobs.get(name)
            if knob is None:
                problems.append(f"engine.knobs.{name}: got {name!r}; allowed: {', '.join(knobs)}")
                continue
            if values == ("auto",) and name in ("n_threads", "n_threads_batch"):
                continue
            bad = [v for v in values if v not in knob.values or isinstance(v, bool) != (knob.kind == "boolean")]
            if bad:
                allowed = ", ".join(KV_CACHE_TYPES) if name in ("type_k", "type_v") else _describe_values(knob.values)
                problems.append(f"engine.knobs.{name}: got {bad[0]!r}; allowed: {allowed}")
        if problems:
            raise ConfigError(problems)

    def baseline(self) -> Candidate:
        """llama-cpp-python's own defaults (f16 cache, no flash attention, batches 512, its thread counts)."""
        return Candidate.from_params({**binding_defaults(), "flash_attn": False})

    def _choices(self) -> dict[str, list[Any]]:
        """Each knob's configured values (threads: auto -> 1, 2, 4, … the cores); a knob not listed: the baseline's."""
        cores = multiprocessing.cpu_count()
        base = self.baseline().params()
        out: dict[str, list[Any]] = {}
        for knob in Candidate.KNOBS:
            values = list(self.cfg.engine.knobs.get(knob.name, ()))
            if values == ["auto"]:
                values = list(thread_counts(cores))
            if not values:
                values = [base[knob.name]] if knob.name in base else []
            if knob.name in base and base[knob.name] not in values:
                values.insert(0, base[knob.name])  # the baseline is always in the space
            out[knob.name] = values
        return out

    def search_space(self, mix: WorkloadMix) -> SearchSpace:
        baseline = self.baseline()
        choices = self._choices()
        dropped: dict[str, str] = {}
        if not build_info().supports_gpu_offload:
            for name in _GPU_KNOBS:
                for value in choices[name]:
                    dropped[f"{name}={value}"] = "this llama.cpp build has no GPU offload (a CPU build)"
                choices[name] = []
        if choices["flash_attn"] == [False]:
            choices["type_v"] = []
        knobs = tuple(dataclasses.replace(k, values=tuple(choices[k.name])) for k in Candidate.KNOBS)
        space = SearchSpace(knobs=knobs, baseline=baseline, candidate_type=Candidate, dropped=dropped)
        return space.drop(self._refusals(space))

    def _refusals(self, space: SearchSpace) -> dict[AnyCandidate, str]:
        """Candidates this build or model cannot run, or that repeat another: each with the reason."""
        gguf = read_gguf(self.gguf_path)
        support = {fa: cache_type_support(str(self.gguf_path), fa, gguf.head_dim) for fa in space.values("flash_attn")}
        out: dict[AnyCandidate, str] = {}
        for c in space.all_candidates():
            assert isinstance(c, Candidate)
            why = support[c.flash_attn][c.type_k].as_k
            if why is not None:
                why = f"type_k={c.type_k} with flash_attn={str(c.flash_attn).lower()}: {why}"
            elif c.flash_attn and support[True][c.type_v].as_v is not None:
                why = f"type_v={c.type_v} with flash attention: {support[True][c.type_v].as_v}"
            elif c.n_ubatch > c.n_batch:
                why = f"n_ubatch {c.n_ubatch} > n_batch {c.n_batch}: llama.cpp clips it to n_batch (a repeat)"
            if why is not None:
                out[c] = why
        return out

    def describe_model(self) -> str:
        a = self.model.architecture
        return (
            f"{self.model.name} ({self.gguf_path}), GGUF {a['model_type']}: {a['num_hidden_layers']} layers, "
            f"{a['num_key_value_heads']} KV heads x {a['head_dim']}, {a['file_bytes'] / MB:.1f} MB; "
            f"llama-cpp-python {build_info().version}"
        )

    def loader(self) -> LlamaCppLoader:
        return LlamaCppLoader(self)

    def model_key(self, candidate: AnyCandidate) -> tuple[Any, ...]:
        assert isinstance(candidate, Candidate)
        return tuple(sorted(candidate.settings().items()))

    def session(self, loaded: Loaded, candidate: AnyCandidate, workload: Workload, seed: int) -> LlamaCppSession:
        assert isinstance(candidate, Candidate)
        return LlamaCppSession(loaded.model, candidate, workload, seed)

    def whole_calls_reason(self, candidate: AnyCandidate) -> str | None:
        assert isinstance(candidate, Candidate)
        if candidate.batch_size > 1:
            return "batched sequences: their own context decodes them together, timed on whole calls"
        return None

    def protocol_note(self) -> str:
        return "whole calls for batched sequences"

    def fidelity_meter(
        self, loader: Loader, baseline: AnyCandidate, quality: QualityConfig, prompt_tokens: int, new_tokens: int
    ) -> FidelityMeter:
        assert isinstance(loader, LlamaCppLoader) and isinstance(baseline, Candidate)
        return LlamaCppFidelityMeter(loader, baseline, quality, prompt_tokens, new_tokens)

    def predict_memory(self, candidate: AnyCandidate, workload: Workload) -> MemoryPrediction:
        """Weights (the file) + KV cache (cells x layers x KV heads x head size x the type's bytes) + buffers.

        The buffers are a rough model (the logits of one micro-batch, and without flash
        attention its attention scores over the context); the trials record how far it is
        from what llama.cpp allocated (``predicted_mem_error_pct``).
        """
        assert isinstance(candidate, Candidate)
        a = self.model.architecture
        cells = context_cells(self.n_ctx)
        if candidate.batch_size > 1:  # the batched context on top of the loaded one
            cells += context_cells(workload.prompt_tokens + workload.new_tokens) * candidate.batch_size
        kv = cells * int(a["num_hidden_layers"]) * int(a["num_key_value_heads"])
        kv_bytes = int(
            kv * (_row_bytes(candidate.type_k, a["head_dim"]) + _row_bytes(candidate.type_v, a["head_dim_v"]))
        )
        micro = min(candidate.n_ubatch, candidate.n_batch, self.n_ctx)
        scores = 0 if candidate.flash_attn else micro * cells * int(a["num_attention_heads"]) * 4
        buffers = micro * (int(a["vocab_size"]) + 4 * int(a["hidden_size"])) * 4 + scores
        return MemoryPrediction(weights_bytes=int(a["file_bytes"]), kv_bytes=kv_bytes, activation_bytes=buffers)

    @classmethod
    def settings_entry(cls, candidate: AnyCandidate, workload: Workload) -> dict[str, Any]:
        assert isinstance(candidate, Candidate)
        n_ctx = workload.prompt_tokens + workload.new_tokens
        return {
            "llama_kwargs": {**candidate.settings(), "n_ctx": context_cells(n_ctx)},
            "cli_flags": export.cli_flags(candidate.settings(), n_ctx),
            "parallel_sequences": candidate.batch_size,
        }

    @classmethod
    def settings_script(cls, context: ScriptContext) -> str:
        candidate = context.candidate
        assert isinstance(candidate, Candidate)
        n_ctx = context.workload.prompt_tokens + context.workload.new_tokens
        header = (
            f'"""kvopt\'s recommended llama.cpp settings for {context.model.name} on {context.device} '
            f"(profile {context.profile}, study {context.study}).\n\n"
            f"Measured by kvopt: {context.label}: TTFT {context.values['ttft_ms']:.1f} ms, decode "
            f"{context.values['decode_tok_s']:.1f} tok/s, peak memory {context.values['peak_mem_mb']:.1f} MB.\n"
            f"llama-server / llama-cli flags: {export.cli_flags(candidate.settings(), n_ctx)}\n"
            'Needs only llama-cpp-python. Run it as is: python recommended.py\n"""\n'
        )
        body = export.python_snippet(str(context.model.gguf or context.model.hub_id), candidate.settings(), n_ctx)
        return header + body.split('"""', 2)[2].lstrip("\n")

    @classmethod
    def paste_snippet(cls, model: ModelConfig, candidate: AnyCandidate, workload: Workload) -> str:
        assert isinstance(candidate, Candidate)
        n_ctx = workload.prompt_tokens + workload.new_tokens
        kwargs = ", ".join(f"{k}={v!r}" for k, v in candidate.settings().items())
        return (
            f"llm = llama_cpp.Llama({str(model.gguf or model.hub_id)!r}, n_ctx={context_cells(n_ctx)}, {kwargs})"
            "  # recommended.py maps the cache types to llama_cpp.GGML_TYPE_*\n"
            f"llama-server -m {model.gguf or model.hub_id} {export.cli_flags(candidate.settings(), n_ctx)}"
            + (f" -np {candidate.batch_size}" if candidate.batch_size > 1 else "")
        )

    def info(self) -> list[tuple[str, str]]:
        build = build_info()
        return [
            ("build", f"llama-cpp-python {build.version}"),
            ("system", build.system_info),
            ("GPU offload", "yes" if build.supports_gpu_offload else "no: a CPU build (n_gpu_layers is not offered)"),
            ("cache types", ", ".join(build.cache_types)),
            ("install", INSTALL_HINT),
        ]

    def capabilities(self) -> tuple[str, list[tuple[str, str | None]]]:
        """Each cache type as K and as V, with flash attention off and on, tried on this model."""
        gguf = read_gguf(self.gguf_path)
        rows: list[tuple[str, str | None]] = []
        for fa in (False, True):
            for name, support in cache_type_support(str(self.gguf_path), fa, gguf.head_dim).items():
                tag = "flash_attn=on" if fa else "flash_attn=off"
                rows.append((f"type_k={name} ({tag})", support.as_k))
                rows.append((f"type_v={name} ({tag})", support.as_v))
        return f"llama.cpp {build_info().version}, head size {gguf.head_dim}", rows


def _describe_values(values: tuple[Any, ...]) -> str:
    """A knob's values for a message: all of them, or their range when there are many."""
    if len(values) > 12:
        return f"{values[0]} … {values[-1]}"
    return ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)


def _row_bytes(type_name: str, head_dim: int) -> float:
    """Bytes of one KV head's row in ``type_name`` (quantized types in blocks of 32 values)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
    return head_dim / block * block_bytes


ENGINE = LlamaCppEngine
