"""Targets for worker processes spawned by tests/test_scale.py: kept free of torch so they start fast."""

from __future__ import annotations

import optuna

from kvopt.config import StorageConfig
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.storage import open_storage, study_lock
from kvopt.study import enqueue_baseline, open_study


def race_to_enqueue(kind: str, url: str, barrier) -> None:
    """One worker's start: open the study and queue the baseline, all at the same moment."""
    cfg = StorageConfig("journal", url) if kind == "journal" else StorageConfig("rdb", url)
    storage = open_storage(cfg)
    base = Candidate("dynamic", "sdpa", "float32", 1)
    space = transformers_space(
        cache_implementation=["dynamic"], attn_implementation=["sdpa"], dtype=["float32"], batch_size=[1], baseline=base
    )
    barrier.wait()
    with study_lock(cfg, storage, "race"):
        study = open_study(storage, "race", optuna.samplers.RandomSampler(), {})
        enqueue_baseline(study, space)
