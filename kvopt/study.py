"""The Optuna study: name, directions, sampler, resuming, and the baseline trial."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage

from kvopt.attrs import BASELINE_ATTR
from kvopt.config import KvoptConfig, ProfileConfig, SamplerConfig
from kvopt.errors import StorageError
from kvopt.metrics import DIRECTIONS, METRICS
from kvopt.sampler import ProfileSampler
from kvopt.space import Candidate, SearchSpace
from kvopt.surrogate import Observation

__all__ = [
    "study_name",
    "study_device_label",
    "make_sampler",
    "open_study",
    "check_compatible",
    "resume_space",
    "enqueue_baseline",
    "BASELINE_ATTR",
]


def study_name(cfg: KvoptConfig, device_label: str) -> str:
    """``<model>-<profile>-<device>`` unless given, so the same command continues one study."""
    return cfg.study.name or f"{cfg.model.name}-{cfg.profile.name}-{device_label}"


def study_device_label(device: object) -> str:
    """The device part of a derived study name: its kind (``cpu``, ``cuda``, ``mps``).

    Not its index: workers pinned to ``cuda:0``, ``cuda:1``, … of one machine are the
    same kind of hardware and must share one study.
    """
    return str(getattr(device, "type", device))


def make_sampler(
    cfg: SamplerConfig,
    seed: int,
    space: SearchSpace,
    profile: ProfileConfig | None = None,
    *,
    memory_prior_mb: Callable[[Candidate], float] | None = None,
    warm_start: Sequence[Observation] = (),
    warm_first: Sequence[Candidate] = (),
) -> optuna.samplers.BaseSampler:
    """The configured sampler. ``profile`` (and the rest) are used by the ``profile`` sampler."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.name == "profile":
            if profile is None:
                raise ValueError("the profile sampler needs the profile")
            return ProfileSampler(
                space,
                profile,
                seed,
                front_every=4 if cfg.front_every is None else cfg.front_every,
                memory_prior_mb=memory_prior_mb,
                warm_start=warm_start,
                warm_first=warm_first,
            )
        if cfg.name == "tpe":
            # constant_liar: trials running in other workers count as bad results, so
            # workers sharing a study do not all sample the same promising point.
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=cfg.n_startup_trials or 5,
                multivariate=True,
                constant_liar=True,
            )
        if cfg.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials or 5)
        if cfg.name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size or 8)
        if cfg.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if cfg.name == "grid":
            return optuna.samplers.GridSampler(space.all_choices(), seed=seed)
    raise ValueError(f"unknown sampler {cfg.name!r}")  # validate() makes this unreachable


def check_compatible(storage: BaseStorage, name: str, space: SearchSpace) -> int:
    """Refuse to continue a study whose trials used other choices; return its trial count.

    Optuna rejects a parameter whose distribution changed, mid-study; checking first
    keeps the stored study untouched and tells the user what to do.
    """
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in DIRECTIONS]:
        raise StorageError(f"study.name: {name!r} exists with other objectives; choose another study.name")
    ours = space.distributions()
    for trial in study.get_trials(deepcopy=False):
        for param, dist in trial.distributions.items():
            if param in ours and dist != ours[param]:
                raise StorageError(
                    f"study.name: {name!r} exists with other choices for {param} "
                    f"({list(dist.choices)} there, {list(ours[param].choices)} now: "  # type: ignore[attr-defined]
                    "a different search space or a different machine); "
                    "allowed: a new study.name, or the search space the study was made with"
                )
    return len(study.trials)


def resume_space(storage: BaseStorage, name: str, space: SearchSpace) -> SearchSpace:
    """The space a stored study continues with, where a choice was dropped here or when it was made.

    Optuna requires one distribution per parameter throughout a study, and the choices this
    run drops (what cannot run, fit or be recommended here) may differ from the stored
    study's — a study stored before random weights screened out the lossy dtypes holds
    bfloat16. A value the stored distribution holds and this run dropped stays in the
    distribution, and every candidate with it is excluded with this run's reason
    (:meth:`SearchSpace.keep_stored_choice`). A value this run offers that the stored study
    dropped when it was made (its ``dropped_choices`` attr) is dropped again, with that
    reason. Any other difference is left for :func:`check_compatible` to refuse.
    """
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return space
    stored: dict[str, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        for param, dist in trial.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                stored.setdefault(param, list(dist.choices))
    dropped_then: dict[str, str] = study.user_attrs.get("dropped_choices") or {}
    for param, then in stored.items():
        now = space.all_choices().get(param)
        if now is None or now == then or not space.choice_param(param):
            continue
        added = [v for v in now if v not in then]
        removed = [v for v in then if v not in now]
        if not all(f"{param}={v}" in dropped_then for v in added):
            continue
        if not all(f"{param}={v}" in space.dropped for v in removed):
            continue
        if added:
            keys = [f"{param}={v}" for v in added]
            space = space.without_choices({k: f"dropped when the study was made: {dropped_then[k]}" for k in keys})
        space = space.keep_stored_choice(param, then)  # the stored order too: Optuna compares it
    return space


def open_study(
    storage: BaseStorage, name: str, sampler: optuna.samplers.BaseSampler, attrs: dict[str, Any]
) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        directions=list(DIRECTIONS),
        load_if_exists=True,
    )
    if study.metric_names != list(METRICS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(METRICS))
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def enqueue_baseline(study: optuna.Study, space: SearchSpace) -> bool:
    """Queue the baseline first unless the study already has it measured or queued."""
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(BASELINE_ATTR) and trial.state in (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.WAITING,
            optuna.trial.TrialState.RUNNING,
        ):
            return False
    study.enqueue_trial(space.baseline.params(), user_attrs={BASELINE_ATTR: True})
    return True
