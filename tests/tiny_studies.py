"""Two tiny studies in one real SQLite file, for the tests that read stored studies back."""

from __future__ import annotations

from pathlib import Path

import kvopt

# A measures batch 1 and 2, B batch 1 and 4: the batch-1 candidates are in both.
BATCHES = {"a": [1, 2], "b": [1, 4]}


def make_two_studies(root: Path) -> str:
    """Run studies ``a`` and ``b`` (every candidate of each small space); return the storage URL."""
    url = f"sqlite:///{root / 'kvopt.db'}"
    for name, batches in BATCHES.items():
        kvopt.tune(
            model="tiny-gpt2",
            profile="ci-micro",
            storage={"url": url},
            # grid + no dominance pruning: every candidate measured; the study stops at exhaustion.
            sampler="grid",
            pruning={"dominated": False},
            # A lock folder of its own: no turn-taking with kvopt processes outside the test.
            scale={"lock_dir": str(root)},
            study={"name": name, "n_trials": 8},
            confirm={"rounds": 2},
            measure={"adaptive": False},
            search_space={
                "dtype": ["float32"],
                "attn_implementation": ["sdpa"],
                "cache_implementation": ["dynamic", "static"],
                "batch_size": batches,
            },
        )
    return url
