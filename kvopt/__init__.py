"""kvopt: find the fastest KV-cache and inference settings for a Transformers model.

Typical use is the command line (``python -m kvopt model=gpt2 profile=rag``); the same
study runs from Python with :func:`tune` on a validated :class:`KvoptConfig`.
"""

from kvopt.config import KvoptConfig, validate
from kvopt.errors import ConfigError, KvoptError, StorageError
from kvopt.runner import StudyResult, prepare, tune
from kvopt.select import Recommendation, Result
from kvopt.space import Candidate

__all__ = [
    "tune",
    "prepare",
    "validate",
    "KvoptConfig",
    "StudyResult",
    "Recommendation",
    "Result",
    "Candidate",
    "KvoptError",
    "ConfigError",
    "StorageError",
]
