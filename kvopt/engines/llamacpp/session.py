"""Measuring one llama.cpp candidate on one workload shape: TTFT, decode, windows, memory, logits.

A candidate is a plain dict of llama.cpp settings (:data:`SETTINGS`): cache types by name,
flash attention, batch sizes, threads and, on a GPU build, layer/KV offload.
:func:`open_model` loads the model with them; :class:`LlamaSession` then times greedy
generation on seeded random prompts, the way llama-bench does, but call by call.

**Clock.** Every figure is wall clock (``time.perf_counter``) around the binding's calls,
stopped only once the step's logits have been read (reading them synchronises a GPU
backend). llama.cpp's own counters (``llama_perf_context``: ``t_p_eval_ms``,
``t_eval_ms``) time only the inside of ``llama_decode``; they leave out what a user of
llama-cpp-python waits for as well - building the batch, the binding's per-call work,
reading the logits and choosing the token - and they are an engine-specific clock, where
the Transformers engine's figures are wall clock too. They are kept beside each call
(:attr:`CallResult.engine_prompt_ms`, :attr:`CallResult.engine_decode_ms`) as a check.

**Memory.** Two figures, both documented on :class:`MemoryReading`: what llama.cpp says it
allocated (weights + KV cache + compute and output buffers: the figure that compares
candidates, like the Transformers engine's allocator bytes), and the process's peak RSS
over one call above its RSS before the model was opened (what the OS saw, noisier).

**Concurrency.** :class:`LlamaSession` runs one sequence (what ``llama_cpp.Llama`` drives);
:class:`LlamaBatchSession` runs ``batch`` sequences together in a second context on the same
weights (``n_seq_max = batch``, one KV stream per sequence), through the low-level
``llama_batch`` API with a sequence id per token - as llama-server serves parallel slots.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kvopt.engines.llamacpp.build import build_info, llama_log
from kvopt.engines.llamacpp.gguf_file import GgufModel
from kvopt.metrics import MB

__all__ = [
    "BATCH_REASON",
    "CELL_PAD",
    "SETTINGS",
    "CallResult",
    "LlamaCppRefused",
    "LlamaBatchSession",
    "LlamaSession",
    "LoadReport",
    "MemoryReading",
    "REPORT_RESOLUTION_BYTES",
    "context_cells",
    "kv_bytes_formula",
    "llama_kwargs",
    "load_report",
    "mean_kl",
    "next_token_logits",
    "open_model",
    "usable_tokens",
]

# The keys a candidate may set, as llama_cpp.Llama names them (checked on 0.3.36:
# type_k/type_v take GGML_TYPE_* ints, flash_attn a bool it turns into flash_attn_type).
SETTINGS = (
    "type_k",
    "type_v",
    "flash_attn",
    "n_batch",
    "n_ubatch",
    "n_threads",
    "n_threads_batch",
    "n_gpu_layers",
    "offload_kqv",
)

# llama.cpp rounds every context up to a multiple of 256 cells (llama_context's
# constructor: n_ctx = GGML_PAD(n_ctx, 256)); asking for the rounded size says what is allocated.
CELL_PAD = 256

# Why LlamaSession itself is batch 1 (LlamaBatchSession is the batched path).
BATCH_REASON = (
    "llama_cpp.Llama drives one sequence per context (its eval, n_tokens and KV trimming are "
    "per-context); concurrent sequences run in LlamaBatchSession's own n_seq_max context"
)


class LlamaCppRefused(RuntimeError):
    """llama.cpp would not load the model or create the context; ``reason`` is its own log line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def context_cells(tokens: int) -> int:
    """The context llama.cpp allocates for ``tokens`` positions: rounded up to 256 cells."""
    return max(CELL_PAD, -(-tokens // CELL_PAD) * CELL_PAD)


def llama_kwargs(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``llama_cpp.Llama`` keyword arguments for a candidate dict (cache type names -> enum values)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown llama.cpp settings {unknown}; allowed: {', '.join(SETTINGS)}")
    kwargs = {k: v for k, v in settings.items() if v is not None}
    types = build_info().cache_types
    for key in ("type_k", "type_v"):
        if key in kwargs:
            name = kwargs[key]
            if name not in types:
                raise ValueError(f"{key} {name!r} is not a cache type of this build; allowed: {', '.join(types)}")
            kwargs[key] = types[name]
    if "flash_attn" in kwargs:
        kwargs["flash_attn"] = bool(kwargs["flash_attn"])
    return kwargs


# -- what llama.cpp reports at load --------------------------------------------------------

_MIB_LINE = {
    "model": re.compile(r"(\S+) model buffer size = +([\d.]+) MiB"),
    "kv_buffer": re.compile(r"(\S+) KV buffer size = +([\d.]+) MiB"),
    "compute": re.compile(r"(\S+) compute buffer size = +([\d.]+) MiB"),
    "output": re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB"),
}
_KV_SIZE = re.compile(r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB")
# llama.cpp prints these figures in MiB with two decimals: each is known to +-0.005 MiB.
REPORT_RESOLUTION_BYTES = int(0.005 * MB)


@dataclass(frozen=True)
class LoadReport:
    """The sizes llama.cpp logged while loading a model and creating its context, in bytes.

    Each buffer figure is the sum over backends (e.g. CPU plus a repacked AMX copy, or CUDA
    plus host) and rounded to 0.01 MiB by llama.cpp's print (:data:`REPORT_RESOLUTION_BYTES`).
    """

    model_bytes: int
    kv_k_bytes: int
    kv_v_bytes: int
    kv_buffer_bytes: int
    compute_bytes: int
    output_bytes: int
    rss_before_bytes: int  # this process's RSS just before the model was opened
    kv_types: tuple[str, str] = ("", "")  # K and V cache type names, as llama.cpp printed them
    # every buffer line as (kind, backend buffer, bytes), e.g. ("kv_buffer", "CUDA0", ...):
    # where device and host memory must be told apart on a GPU build
    buffers: tuple[tuple[str, str, int], ...] = ()

    @property
    def kv_bytes(self) -> int:
        return self.kv_k_bytes + self.kv_v_bytes


def _parse_report(text: str, rss_before: int) -> LoadReport:
    sums = {key: 0.0 for key in _MIB_LINE}
    buffers: list[tuple[str, str, int]] = []
    for line in text.splitlines():
        if line.lstrip().startswith("~"):  # destructor lines repeat the sizes
            continue
        for key, pattern in _MIB_LINE.items():
            if m := pattern.search(line):
                sums[key] += float(m.group(2))
                buffers.append((key, m.group(1), round(float(m.group(2)) * MB)))
    k_mib = v_mib = 0.0
    kv_types = ("", "")
    for m in _KV_SIZE.finditer(text):  # one line per cache (two for an iSWA model)
        k_mib += float(m.group(2))
        v_mib += float(m.group(4))
        kv_types = (m.group(1), m.group(3))
    return LoadReport(
        model_bytes=round(sums["model"] * MB),
        kv_k_bytes=round(k_mib * MB),
        kv_v_bytes=round(v_mib * MB),
        kv_buffer_bytes=round(sums["kv_buffer"] * MB),
        compute_bytes=round(sums["compute"] * MB),
        output_bytes=round(sums["output"] * MB),
        rss_before_bytes=rss_before,
        kv_types=kv_types,
        buffers=tuple(buffers),
    )


_REPORTS: weakref.WeakKeyDictionary[Any, LoadReport] = weakref.WeakKeyDictionary()


def load_report(llm: Any) -> LoadReport:
    """What llama.cpp logged when :func:`open_model` made ``llm`` (KeyError for another Llama)."""
    return _REPORTS[llm]


def open_model(path: str | Path, settings: Mapping[str, Any], n_ctx: int, seed: int = 0) -> Any:
    """Load ``path`` with the candidate's settings and a context of ``n_ctx`` positions (rounded up to 256).

    ``n_ctx`` is the workload's prompt + new tokens. Returns the ``llama_cpp.Llama``; raises
    :class:`LlamaCppRefused` with llama.cpp's own reason when it will not load or create the
    context (e.g. a quantized V cache without flash attention). What llama.cpp logged about
    its buffers is kept for :func:`load_report`.
    """
    import llama_cpp

    from kvopt.measure.rss import current_rss_bytes  # kvopt.measure imports torch: only when used

    kwargs = llama_kwargs(settings)
    rss_before = current_rss_bytes()
    with llama_log() as log:
        try:
            llm = llama_cpp.Llama(str(path), n_ctx=context_cells(n_ctx), seed=seed, verbose=False, **kwargs)
        except ValueError as exc:  # the binding's "Failed to load model / create llama_context"
            raise LlamaCppRefused(log.error() or str(exc)) from exc
    _REPORTS[llm] = _parse_report(log.text(), rss_before)
    return llm


def kv_bytes_formula(model: GgufModel, cells: int, type_k: str, type_v: str) -> int:
    """KV-cache bytes from the model's shape: cells × layers × kv_heads × (K row + V row bytes).

    A row of ``kv_heads × head_dim`` values of a quantized type takes ``values / block ×
    block_bytes`` (q8_0: 34 bytes per 32 values, q4_0 18, q4_1 20, q5_0 22, q5_1 24,
    iq4_nl 18; f16 2 bytes per value), read from gguf's table of ggml's types.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    def row(type_name: str, values: int) -> int:
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]]
        return values // block * block_bytes

    per_cell = row(type_k, model.kv_heads * model.head_dim) + row(type_v, model.kv_heads * model.head_dim_v)
    return cells * model.layers * per_cell


# -- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallResult:
    """One timed greedy call: time to the first token, and the decode after it."""

    ttft_s: float
    decode_s: float  # from the first token's logits to the last token's
    new_tokens: int  # tokens made (fewer than asked when a deadline cut the call)
    cut_by_deadline: bool
    engine_prompt_ms: float  # llama_perf_context's t_p_eval_ms over the call (a cross-check)
    engine_decode_ms: float  # llama_perf_context's t_eval_ms over the call
    batch: int = 1  # sequences decoded together; new_tokens is per sequence

    @property
    def ttft_ms(self) -> float:
        return self.ttft_s * 1000.0

    @property
    def decode_tok_s(self) -> float:
        """Tokens after the first, of every sequence, over the seconds after the first (nan if none)."""
        made = self.batch * (self.new_tokens - 1)
        return made / self.decode_s if made > 0 and self.decode_s > 0 else math.nan

    def metrics(self) -> dict[str, float]:
        """By :mod:`kvopt.metrics` name, as the Transformers engine reports a call."""
        return {"ttft_ms": self.ttft_ms, "decode_tok_s": self.decode_tok_s}


@dataclass(frozen=True)
class MemoryReading:
    """Memory of one candidate, two ways.

    - ``accounted_bytes``: what llama.cpp allocated, by its own log - weights (``model``
      buffers: for an mmapped CPU model that is the mapped file, plus any repacked copy
      the CPU backend makes, e.g. for AMX) + KV cache (its tensors) + compute buffers
      (sized at context creation for the largest graph, allocated once) + output buffer
      (logits). ggml allocates nothing else during a call, so this is the peak of ggml's
      allocations. It is exact but for llama.cpp's 0.01-MiB print, and deterministic: the
      figure to compare candidates by.
    - ``peak_rss_bytes``: the process's resident-set high-water mark over one call (the
      kernel's VmHWM, reset just before; :class:`kvopt.measure.rss.PeakRSS`) minus its
      RSS just before :func:`open_model`. It counts what the OS sees: mapped weight pages
      once read, the KV cache (zeroed at creation, so resident), buffers, plus whatever
      else the process allocated meanwhile; it depends on the allocator and page cache.
    """

    accounted_bytes: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    output_bytes: int
    peak_rss_bytes: int
    rss_method: str


def _argmax(logits: np.ndarray) -> int:
    return int(np.argmax(logits))


def usable_tokens(llm: Any) -> list[int]:
    """The vocabulary less its control and end-of-generation tokens: what a prompt is drawn from.

    An EOS in a prompt would not stop anything here, but control tokens are not text a user
    sends, and some models treat them specially.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return [
        t
        for t in range(int(llm.n_vocab()))
        if not llama_cpp.llama_vocab_is_control(vocab, t) and not llama_cpp.llama_vocab_is_eog(vocab, t)
    ]


class LlamaSession:
    """Timed greedy generation on one model and context, for one workload shape.

    The prompt is ``prompt_tokens`` ids drawn by a seeded RNG from :func:`usable_tokens`.
    Generation is greedy and always makes the asked number of tokens: EOS does not end it
    (fixed work per call).
    """

    def __init__(self, llm: Any, prompt_tokens: int, new_tokens: int, seed: int = 0) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.new_tokens = new_tokens
        self.n_vocab = int(llm.n_vocab())
        cells = int(llm.n_ctx())
        if prompt_tokens < 1 or new_tokens < 1 or prompt_tokens + new_tokens > cells:
            raise ValueError(f"prompt {prompt_tokens} + new {new_tokens} tokens must fit the context of {cells}")
        # one seeded stream as long as the context: the prompt is its start, a window's context too
        self.tokens = np.random.default_rng(seed).choice(usable_tokens(llm), size=cells).tolist()
        self.prompt = self.tokens[:prompt_tokens]
        self._window: tuple[int, int] | None = None  # (context length, the token after it)

    # low-level helpers

    def _clear(self) -> None:
        """An empty KV cache and no tokens: the next eval starts a fresh sequence."""
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.llm.ctx), True)
        self.llm.reset()
        self._window = None  # a filled window context is gone with it

    def _logits(self) -> np.ndarray:
        """The last evaluated position's logits (a view into llama.cpp's buffer: copy to keep)."""
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def _perf(self) -> tuple[float, float]:
        data = self._lib.llama_perf_context(self.llm.ctx)
        return float(data.t_p_eval_ms), float(data.t_eval_ms)

    # timed work

    def call(self, new_tokens: int | None = None, deadline_s: float | None = None) -> CallResult:
        """One fresh greedy call: prefill the prompt (timed to its logits = TTFT), then decode.

        ``deadline_s``: stop at the first token after this many seconds from the start
        (``cut_by_deadline`` is then set and ``new_tokens`` says how many were made).
        """
        n = self.new_tokens if new_tokens is None else new_tokens
        if not 1 <= n <= self.llm.n_ctx() - len(self.prompt):
            raise ValueError(f"new_tokens {n} must be 1..{self.llm.n_ctx() - len(self.prompt)}")
        self._clear()
        p0, e0 = self._perf()
        start = time.perf_counter()
        self.llm.eval(self.prompt)
        token = _argmax(self._logits())
        first = time.perf_counter()
        made, cut = 1, False
        while made < n:
            if deadline_s is not None and time.perf_counter() - start >= deadline_s:
                cut = True
                break
            self.llm.eval([token])
            token = _argmax(self._logits())
            made += 1
        end = time.perf_counter()
        p1, e1 = self._perf()
        return CallResult(first - start, end - first, made, cut, p1 - p0, e1 - e0)

    def prefill_ms(self) -> float:
        """Milliseconds from an empty cache to the prompt's first-token logits."""
        self._clear()
        start = time.perf_counter()
        self.llm.eval(self.prompt)
        _argmax(self._logits())
        return (time.perf_counter() - start) * 1000.0

    def fill_window(self, context_tokens: int) -> float:
        """Fill the cache with ``context_tokens`` positions (untimed setup); returns its seconds.

        Afterwards :meth:`window` decodes from exactly this cache as often as asked, until
        another method of this session (or of the same ``llm``) clears it.
        """
        if not 1 <= context_tokens < self.llm.n_ctx():
            raise ValueError(f"context_tokens {context_tokens} must be 1..{self.llm.n_ctx() - 1}")
        self._clear()
        start = time.perf_counter()
        self.llm.eval(self.tokens[:context_tokens])
        self._window = (context_tokens, _argmax(self._logits()))
        return time.perf_counter() - start

    def save_window(self) -> tuple[Any, tuple[int, int]]:
        """The filled window context (KV cache and position), kept to restore after other calls clear it."""
        if self._window is None:
            raise RuntimeError("fill_window first")
        return self.llm.save_state(), self._window

    def restore_window(self, saved: tuple[Any, tuple[int, int]]) -> None:
        """Put back a context :meth:`save_window` kept (a copy into llama.cpp's cache: untimed set-up)."""
        state, window = saved
        self.llm.load_state(state)
        self._window = window

    def window(self, steps: int) -> list[float]:
        """Per-step decode latencies (seconds) of ``steps`` greedy steps from the filled context.

        Each call starts from the same cache: setting the binding's ``n_tokens`` back to the
        context length makes its next ``eval`` remove every KV entry at or past that
        position (``llama_memory_seq_rm(seq, n_tokens, -1)``) before decoding, so the steps
        of the previous window are gone and the context is what :meth:`fill_window` left.
        """
        if self._window is None:
            raise RuntimeError("fill_window first")
        context, token = self._window
        if context + steps > self.llm.n_ctx():
            raise ValueError(f"{context} + {steps} steps exceed the context of {self.llm.n_ctx()}")
        self.llm.n_tokens = context
        out: list[float] = []
        for _ in range(steps):
            start = time.perf_counter()
            self.llm.eval([token])
            token = _argmax(self._logits())
            out.append(time.perf_counter() - start)
        return out

    # memory

    def kv_bytes(self) -> int:
        """The KV cache's bytes (K + V tensors) for this context.

        llama.cpp's own report (its log at context creation) is the authority, but it is
        printed in MiB to two decimals. Where :func:`kv_bytes_formula` on the GGUF shape
        agrees with it within that rounding (plain caches), the formula's exact figure is
        returned; where it does not (e.g. a sliding-window model, whose second cache the
        formula does not know), llama.cpp's figure is.
        """
        from kvopt.engines.llamacpp.gguf_file import read_gguf

        report = load_report(self.llm)
        if not all(report.kv_types):  # no KV line in the log (a cache kind without one)
            return report.kv_bytes
        exact = kv_bytes_formula(read_gguf(self.llm.model_path), int(self.llm.n_ctx()), *report.kv_types)
        return exact if abs(exact - report.kv_bytes) <= 2 * REPORT_RESOLUTION_BYTES else report.kv_bytes

    def memory(self) -> MemoryReading:
        """Both memory figures of :class:`MemoryReading`; runs one untimed full call for the RSS peak."""
        from kvopt.measure.rss import PeakRSS

        report = load_report(self.llm)
        with PeakRSS() as peak:
            self.call()
        return MemoryReading(
            accounted_bytes=report.model_bytes + report.kv_buffer_bytes + report.compute_bytes + report.output_bytes,
            weights_bytes=report.model_bytes,
            kv_bytes=report.kv_bytes,
            compute_bytes=report.compute_bytes,
            output_bytes=report.output_bytes,
            peak_rss_bytes=max(0, peak.bytes - report.rss_before_bytes),
            rss_method=peak.method,
        )


class LlamaBatchSession:
    """``batch`` sequences generated together: one ``llama_decode`` per step for all of them.

    A second context on ``llm``'s weights with ``n_seq_max = batch`` and one KV stream per
    sequence (each ``context_cells(prompt + new)`` cells), made from ``llm``'s own context
    parameters (cache types, flash attention, batch sizes, threads). Sequence ``s`` gets
    its own seeded random prompt. The prefill packs the prompts into batches of up to
    ``n_batch`` tokens, tagged with their sequence ids; TTFT is when every sequence has its
    first token. Each decode step is one batch of ``batch`` tokens; ``n_batch`` is the one
    llama_cpp gave ``llm``'s context (at most that context's size), so ``batch`` may not
    exceed it. :meth:`close` (or the ``with`` block) frees the context; call it before
    closing ``llm``, whose weights it uses. llama.cpp's perf counters file a step of several tokens
    under prompt evaluation, so ``engine_decode_ms`` is 0 here for ``batch`` > 1.
    """

    def __init__(self, llm: Any, batch: int, prompt_tokens: int, new_tokens: int, seed: int = 0) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llm, self.batch, self.new_tokens = llm, batch, new_tokens
        self.n_vocab = int(llm.n_vocab())
        self.n_batch = int(llm.context_params.n_batch)
        if batch < 1 or batch > self.n_batch:
            raise ValueError(f"batch {batch} must be 1..n_batch ({self.n_batch}): one decode step holds them all")
        if prompt_tokens < 1 or new_tokens < 1:
            raise ValueError(f"prompt {prompt_tokens} and new {new_tokens} tokens must be at least 1")
        usable, rng = usable_tokens(llm), np.random.default_rng(seed)
        self.prompts = [rng.choice(usable, size=prompt_tokens).tolist() for _ in range(batch)]
        self.cells = context_cells(prompt_tokens + new_tokens)  # per sequence
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_seq_max = batch
        params.kv_unified = False  # a stream per sequence, as separate requests have
        params.n_ctx = self.cells * batch
        with llama_log() as log:
            ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not ctx:
            raise LlamaCppRefused(log.error() or "llama_init_from_model returned NULL")
        self.ctx = ctx
        self.report = _parse_report(log.text(), 0)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.generated: list[list[int]] = []  # the last call's tokens, per sequence

    def close(self) -> None:
        if self.ctx is not None:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> LlamaBatchSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        b = self._batch
        b.n_tokens = len(items)
        for i, (token, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        rc = self._lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, i: int) -> int:
        ptr = self._lib.llama_get_logits_ith(self.ctx, i)
        return _argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)))

    def call(self, new_tokens: int | None = None, deadline_s: float | None = None) -> CallResult:
        """One fresh call of all sequences: TTFT when all have a first token, then decode together."""
        if self.ctx is None:
            raise RuntimeError("closed")
        n = self.new_tokens if new_tokens is None else new_tokens
        if not 1 <= n <= self.cells - len(self.prompts[0]):
            raise ValueError(f"new_tokens {n} must be 1..{self.cells - len(self.prompts[0])}")
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.ctx), True)
        p0 = self._lib.llama_perf_context(self.ctx)
        items = [(t, pos, s, pos == len(p) - 1) for s, p in enumerate(self.prompts) for pos, t in enumerate(p)]
        tokens = [0] * self.batch
        start = time.perf_counter()
        for c in range(0, len(items), self.n_batch):
            chunk = items[c : c + self.n_batch]
            self._decode(chunk)
            for i, (_, _, seq, last) in enumerate(chunk):
                if last:  # read now: the next decode overwrites the logits
                    tokens[seq] = self._argmax(i)
        first = time.perf_counter()
        made, cut, prompt = 1, False, len(self.prompts[0])
        generated = [tokens]
        while made < n:
            if deadline_s is not None and time.perf_counter() - start >= deadline_s:
                cut = True
                break
            self._decode([(tokens[s], prompt + made - 1, s, True) for s in range(self.batch)])
            tokens = [self._argmax(s) for s in range(self.batch)]
            generated.append(tokens)
            made += 1
        end = time.perf_counter()
        self.generated = [list(seq) for seq in zip(*generated)]
        p1 = self._lib.llama_perf_context(self.ctx)
        return CallResult(
            ttft_s=first - start,
            decode_s=end - first,
            new_tokens=made,
            cut_by_deadline=cut,
            engine_prompt_ms=p1.t_p_eval_ms - p0.t_p_eval_ms,
            engine_decode_ms=p1.t_eval_ms - p0.t_eval_ms,
            batch=self.batch,
        )

    def kv_bytes(self) -> int:
        """The batched context's KV bytes as llama.cpp reported them (all ``batch`` streams)."""
        return self.report.kv_bytes


def next_token_logits(
    llm: Any, prompt_ids: Sequence[int], new_tokens: int, forced: Sequence[int] | None = None
) -> tuple[list[int], np.ndarray]:
    """Each step's raw next-token logits, greedy or teacher-forced, from a fresh cache.

    Row ``i`` of the (new_tokens, vocab) array is the distribution of new token ``i`` given
    the prompt and the tokens before it. Free-running (``forced`` None) the tokens are the
    greedy choices; forced, they are ``forced[:new_tokens]`` whatever the logits say, so
    two cache settings can be compared on the same context (KL vs an f16-cache baseline).
    """
    import llama_cpp

    if forced is not None and len(forced) < new_tokens:
        raise ValueError(f"forced has {len(forced)} tokens, {new_tokens} needed")
    n_vocab = int(llm.n_vocab())
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    llm.reset()
    rows = np.empty((new_tokens, n_vocab), dtype=np.float32)
    tokens: list[int] = []
    llm.eval(list(prompt_ids))
    for i in range(new_tokens):
        if i:
            llm.eval([tokens[-1]])
        rows[i] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
        tokens.append(int(forced[i]) if forced is not None else _argmax(rows[i]))
    return tokens, rows


def mean_kl(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean over steps of KL(softmax(reference) || softmax(logits)), in nats."""
    ref = reference - reference.max(axis=1, keepdims=True)
    ref -= np.log(np.exp(ref).sum(axis=1, keepdims=True))
    other = logits - logits.max(axis=1, keepdims=True)
    other -= np.log(np.exp(other).sum(axis=1, keepdims=True))
    return float((np.exp(ref) * (ref - other)).sum(axis=1).mean())
