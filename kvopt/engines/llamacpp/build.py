"""What the installed llama.cpp build is and can do: version, backends, KV-cache types.

Everything here asks the build itself (llama_cpp's constants and C functions, or by trying)
rather than assuming a release: cache types are read from ``GGML_TYPE_*``, and which of
them a given model accepts is found by creating a small context with each and reading
llama.cpp's own log line when it refuses. The log capture (:func:`llama_log`) is here
too: the Python binding only says "failed to create llama_context"; the reason is logged.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "KV_CACHE_TYPES",
    "CacheSupport",
    "LlamaCppBuild",
    "LogCapture",
    "build_info",
    "cache_type_support",
    "llama_log",
    "missing",
    "supported_cache_types",
]

INSTALL_HINT = "pip install -e '.[llamacpp]'"

# The names llama.cpp's own tools accept for --cache-type-k/-v (common/arg.cpp,
# kv_cache_types), spelled as ggml_type_name prints them. Their enum values are read from
# the binding's GGML_TYPE_* constants; one it lacks comes from gguf's copy of ggml's enum,
# or is left out.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

# ggml_log_level in ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the
# line before). llama-cpp-python's _logger still comments an older order; ggml.h decides.
_LEVEL_ERROR, _LEVEL_CONT = 4, 5


def missing() -> str | None:
    """Why ``import llama_cpp`` fails (one line with the install hint), or None when it works."""
    try:
        importlib.import_module("llama_cpp")
    except ImportError as exc:
        return f"llama-cpp-python is not importable ({exc}); install it with {INSTALL_HINT}"
    except OSError as exc:  # the package is there but its shared library does not load
        return f"llama-cpp-python's native library does not load ({exc}); reinstall with {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class LlamaCppBuild:
    """The installed llama-cpp-python and the llama.cpp compiled into it."""

    version: str
    system_info: str
    supports_gpu_offload: bool
    supports_mmap: bool
    cache_types: dict[str, int] = field(default_factory=dict)  # name -> GGML_TYPE_* value


@functools.cache
def build_info() -> LlamaCppBuild:
    """Describe the installed build (requires llama_cpp; cached: it cannot change in a process)."""
    import llama_cpp

    types = {name: getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None) for name in KV_CACHE_TYPES}
    try:  # a constant the binding lacks (0.3.36 has no GGML_TYPE_BF16): gguf mirrors ggml's enum
        from gguf import GGMLQuantizationType

        for name, value in types.items():
            if value is None and name.upper() in GGMLQuantizationType.__members__:
                types[name] = int(GGMLQuantizationType[name.upper()])
    except ImportError:
        pass
    return LlamaCppBuild(
        version=str(llama_cpp.__version__),
        system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        supports_gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        supports_mmap=bool(llama_cpp.llama_supports_mmap()),
        cache_types={n: int(v) for n, v in types.items() if v is not None},
    )


# -- llama.cpp's log ------------------------------------------------------------------


@dataclass
class LogCapture:
    """The (level, text) lines llama.cpp logged inside one ``with llama_log()`` block."""

    lines: list[tuple[int, str]] = field(default_factory=list)

    def text(self) -> str:
        return "".join(t for _, t in self.lines)

    def error(self) -> str | None:
        """The first error line (the cause; later ones say what failed because of it), without its
        ``function:`` prefix; None when none."""
        for level, text in self.lines:
            if level == _LEVEL_ERROR and text.strip():
                line = text.strip().splitlines()[-1]
                head, sep, rest = line.partition(": ")
                return rest if sep and " " not in head else line
        return None


_captures: list[LogCapture] = []
_installed: Any = None  # our C callback: kept referenced, or ctypes frees it under llama.cpp


def _install() -> None:
    """Route llama.cpp's log through one Python callback for good (once per process).

    It hands every line to the open captures, then to llama-cpp-python's own callback,
    so the binding's verbose/quiet behaviour is what it was.
    """
    global _installed
    if _installed is not None:
        return
    import llama_cpp

    try:
        from llama_cpp import _logger

        forward: Any = _logger.llama_log_callback
    except (ImportError, AttributeError):  # a release without it: nothing to forward to
        forward = None

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace") if text else ""
        for capture in _captures:
            kind = capture.lines[-1][0] if level == _LEVEL_CONT and capture.lines else int(level)
            capture.lines.append((kind, line))
        if forward is not None:
            forward(level, text, user_data)

    _installed = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


@contextmanager
def llama_log() -> Iterator[LogCapture]:
    """Collect what llama.cpp logs inside the block (all levels, even with verbose=False)."""
    _install()
    capture = LogCapture()
    _captures.append(capture)
    try:
        yield capture
    finally:
        _captures.remove(capture)


# -- which cache types a model accepts -------------------------------------------------


@dataclass(frozen=True)
class CacheSupport:
    """Whether one cache type works as K (V at f16) and as V (K at f16): None, or why not."""

    as_k: str | None
    as_v: str | None


def _try_context(llm: Any, type_k: int, type_v: int, flash_attn: bool) -> str | None:
    """Create (and decode one token in) a 256-cell context; None, or llama.cpp's reason."""
    import llama_cpp

    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 256, 32, 32
    params.n_threads = params.n_threads_batch = 1
    params.type_k, params.type_v = type_k, type_v
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    with llama_log() as log:
        ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not ctx:
            return log.error() or "llama_init_from_model returned NULL"
        try:
            # one real step: a context that builds may still fail at its first graph
            batch = llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(0), 1)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                return log.error() or f"llama_decode returned {rc}"
        finally:
            llama_cpp.llama_free(ctx)
    return None


def cache_type_support(model_path: str, flash_attn: bool, head_dim: int) -> dict[str, CacheSupport]:
    """Each cache type this build knows, tried on ``model_path`` as K and as V.

    The model is loaded once; each try is a fresh 256-cell context on it (milliseconds
    for a small model). Checks llama.cpp makes only when a context is created - quantized
    V needs flash attention, a quantized block must divide the head size - show up here
    with llama.cpp's own wording.
    """
    import llama_cpp
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    head_k = head_dim  # the K heads' width (GgufModel.head_dim)
    types = build_info().cache_types
    f16 = types["f16"]
    llm = llama_cpp.Llama(model_path, n_ctx=256, n_batch=32, n_ubatch=32, n_threads=1, verbose=False)
    out: dict[str, CacheSupport] = {}
    try:
        for name, value in types.items():
            as_k = _try_context(llm, value, f16, flash_attn)
            block = GGML_QUANT_SIZES[GGMLQuantizationType(value)][0]
            if as_k is None and head_k % block:
                # Without flash attention llama.cpp checks nothing here and runs: the blocks
                # straddle heads and every such K type gives the same wrong scores (measured).
                as_k = f"{block}-value blocks do not divide the {head_k}-wide K heads: llama.cpp runs it without "
                as_k += "flash attention but its attention scores are wrong"
            out[name] = CacheSupport(as_k=as_k, as_v=_try_context(llm, f16, value, flash_attn))
    finally:
        llm.close()
    return out


def supported_cache_types(model_path: str, flash_attn: bool, head_dim: int) -> dict[str, str | None]:
    """Cache type name -> None when it works as both K and V on this model, else why not (one line)."""
    out: dict[str, str | None] = {}
    for name, support in cache_type_support(model_path, flash_attn, head_dim).items():
        why = [f"as {role}: {reason}" for role, reason in (("K", support.as_k), ("V", support.as_v)) if reason]
        out[name] = "; ".join(why) or None
    return out
