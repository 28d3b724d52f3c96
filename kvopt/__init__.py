"""kvopt: find the fastest KV-cache and inference settings for a Transformers model or a GGUF model (llama.cpp).

Typical use is the command line (``python -m kvopt model=gpt2 profile=rag``, or
``python -m kvopt engine=llamacpp model.gguf=PATH``); the same study runs from Python:
``kvopt.tune(model="gpt2", profile="rag")`` (or a dict, a list of overrides, or a validated
:class:`KvoptConfig`), and ``kvopt.load(study_name, storage)`` reads a stored one back.
``recommendation.model_kwargs()`` / ``.generate_kwargs()`` apply a Transformers result in your
own code; ``recommendation.candidate()`` is any engine's chosen settings.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module that defines it. Loaded on first use, so ``import kvopt``
# stays cheap (the runner imports torch and transformers).
_EXPORTS = {
    "tune": "kvopt.api",
    "load": "kvopt.api",
    "compose_config": "kvopt.api",
    "prepare": "kvopt.runner",
    "validate": "kvopt.config",
    "KvoptConfig": "kvopt.config",
    "StudyResult": "kvopt.runner",
    "StoredStudy": "kvopt.stored",
    "Recommendation": "kvopt.select",
    "Result": "kvopt.select",
    "Candidate": "kvopt.space",
    "Knob": "kvopt.space",
    "SearchSpace": "kvopt.space",
    "KvoptError": "kvopt.errors",
    "ConfigError": "kvopt.errors",
    "StorageError": "kvopt.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kvopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
