"""What a GGUF file says about its model, read from the metadata alone (no weights loaded).

:func:`read_gguf` gives the shape figures the KV-cache arithmetic needs (layers, KV heads,
head size, context length) and turns every way a ``model.gguf`` setting can be wrong -
no such file, not a GGUF file, metadata that cannot be parsed - into one
:class:`~kvopt.errors.ConfigError` line naming the field, the value and what is allowed.
:func:`unsupported_architecture` asks the installed llama.cpp whether it can load it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvopt.engines.llamacpp.build import INSTALL_HINT
from kvopt.errors import ConfigError

__all__ = ["FIELD", "GGUF_MAGIC", "GgufModel", "read_gguf", "unsupported_architecture"]

FIELD = "model.gguf"
GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (gguf.GGUF_MAGIC, as bytes)


@dataclass(frozen=True)
class GgufModel:
    """The figures of one GGUF model that sizing and the search need.

    ``heads``/``kv_heads`` are the largest per-layer counts where a model varies them by
    layer; ``head_dim`` is the K head size and ``head_dim_v`` the V head size (equal but
    for a few architectures, e.g. MLA ones).
    """

    path: Path
    architecture: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    embedding: int
    context_length: int
    vocab_size: int
    file_bytes: int
    head_dim_v: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim_v:
            object.__setattr__(self, "head_dim_v", self.head_dim)


def _problem(given: object, why: str) -> ConfigError:
    return ConfigError([f"{FIELD}: {given!s} {why}"])


def _value(reader: Any, key: str) -> Any:
    """The field's value (a scalar, a string, or a list for arrays), None when absent."""
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        return max(value)  # per-layer counts (e.g. head_count_kv on hybrid models): the largest
    return value


def read_gguf(path: str | os.PathLike[str]) -> GgufModel:
    """Read a GGUF file's model figures; raise ConfigError naming ``model.gguf`` when it cannot.

    Read once per file version (its path, size and modification time): the metadata of a
    multi-GB model is parsed once per process, not once per trial.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise _problem(path, f"{what}; allowed: the path of a .gguf model file")
    stat = path.stat()
    return _read_gguf(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_gguf(path: Path, size: int, mtime_ns: int) -> GgufModel:
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise _problem(path, f"{what}; allowed: the path of a .gguf model file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise _problem(path, f"is not a GGUF file (starts with {magic!r}, a GGUF file starts with {GGUF_MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # the llamacpp extra brings gguf; say so rather than fail obscurely
        raise _problem(path, f"cannot be read: the gguf package is missing ({exc}); {INSTALL_HINT}") from exc
    try:
        reader = GGUFReader(path)
        arch = _value(reader, "general.architecture")
        if not isinstance(arch, str) or not arch:
            raise ValueError("no general.architecture")

        def need(key: str, default: int | None = None) -> int:
            value = _value(reader, f"{arch}.{key}")
            if value is None:
                if default is None:
                    raise ValueError(f"no {arch}.{key}")
                return default
            return int(value)

        embedding = need("embedding_length")
        heads = need("attention.head_count")
        head_dim = need("attention.key_length", embedding // heads if heads else 0)
        tokens = reader.get_field("tokenizer.ggml.tokens")
        vocab = need("vocab_size", len(tokens.data) if tokens is not None else 0)
        model = GgufModel(
            path=path,
            architecture=arch,
            layers=need("block_count"),
            heads=heads,
            kv_heads=need("attention.head_count_kv", heads),
            head_dim=head_dim,
            head_dim_v=need("attention.value_length", head_dim),
            embedding=embedding,
            context_length=need("context_length"),
            vocab_size=vocab,
            file_bytes=path.stat().st_size,
        )
    except Exception as exc:  # GGUFReader raises ValueError, IndexError, struct errors... on a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _problem(path, f"has unreadable GGUF metadata ({reason}); allowed: a complete GGUF v2/v3 file") from exc
    return model


def unsupported_architecture(model: GgufModel) -> str | None:
    """Why the installed llama.cpp cannot load this model (one line), or None when it can.

    Loads it for real with the smallest context (weights are memory-mapped, not copied, so
    this is cheap) and reads llama.cpp's own log for the reason: the Python binding only
    says "failed to load". Requires llama_cpp to be importable.
    """
    import llama_cpp

    from kvopt.engines.llamacpp.build import llama_log

    with llama_log() as log:
        try:
            llm = llama_cpp.Llama(str(model.path), n_ctx=256, n_batch=32, n_ubatch=32, n_threads=1, verbose=False)
        except Exception as exc:  # ValueError from the binding; the reason is in the log
            reason = log.error() or str(exc)
            return (
                f"{FIELD}: architecture {model.architecture!r} of {model.path} cannot be loaded by llama.cpp ({reason})"
            )
    llm.close()
    return None
