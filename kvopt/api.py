"""The Python API: :func:`tune` a study from a dict, overrides or keywords; :func:`load` one.

``kvopt.tune(model="tiny-gpt2", profile="ci-micro", study={"n_trials": 3})`` composes the
shipped Hydra configs exactly as ``python -m kvopt model=tiny-gpt2 profile=ci-micro
study.n_trials=3`` does, validates them the same way and runs the same study.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from kvopt.compose import Overrides, compose_config

if TYPE_CHECKING:  # importing them at run time would load torch with ``import kvopt``
    from kvopt.runner import StudyResult
    from kvopt.stored import StoredStudy

__all__ = ["compose_config", "tune", "load"]


def tune(
    config: Overrides = None,
    /,
    *,
    output_dir: str | Path | None = None,
    console: Console | None = None,
    **overrides: Any,
) -> StudyResult:
    """Run a study as ``python -m kvopt`` does and return its result.

    The result has ``.front`` (Pareto front), ``.recommendation`` (with ``model_kwargs()`` and
    ``generate_kwargs()``), ``.baseline``, ``.results`` and ``.study_name``. With
    ``output_dir``, results.json, recommended.yaml and recommended.py are written there.
    Raises :class:`~kvopt.errors.KvoptError` on bad input, before any study is touched.
    """
    import optuna

    from kvopt import runner

    cfg = compose_config(config, **overrides)
    prepared = runner.prepare(cfg)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kvopt prints each trial itself, as the CLI does
    try:
        return runner.tune(
            cfg,
            output_dir=Path(output_dir) if output_dir is not None else None,
            console=console,
            prepared=prepared,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
        if prepared.device_lock is not None:  # a long-lived caller must not keep the lock file open
            prepared.device_lock.close()


def load(study_name: str, storage: str) -> StoredStudy:
    """A stored study: its results, front, (confirmed) recommendation and the Optuna study.

    ``storage`` is the URL the study ran with (``sqlite:///kvopt.db``, ``postgresql://…``)
    or a journal file's path.
    """
    from kvopt.stored import load_study

    return load_study(study_name, storage)
