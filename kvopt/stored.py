"""A study read back from its storage alone: no config file and no model are needed.

``kvopt report``, ``kvopt compare``, ``kvopt.load`` and the end-of-run report all build on
:class:`StoredStudy`, so what they show is derived the same way from the same stored data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from kvopt.attrs import BASELINE_ATTR, ENGINE_ATTR, REASON_ATTR
from kvopt.config import StorageConfig, validate_profile
from kvopt.confirm import confirmed_recommendation
from kvopt.engines import DEFAULT_ENGINE
from kvopt.errors import ConfigError, KvoptError, StorageError
from kvopt.paths import conf_dir, sqlite_path
from kvopt.select import Recommendation, Result, collect_results, pareto_front, recommend
from kvopt.storage import describe_storage, mask_url, mask_urls, open_storage

__all__ = [
    "StoredStudy",
    "load_study",
    "parse_source",
    "stored_study",
    "open_existing_storage",
    "storage_config",
    "default_storage_url",
    "trial_records",
]

_KINDS = "the storage a study was run with: sqlite:///file.db, postgresql://…, or a journal file path"


@dataclass
class StoredStudy:
    """A finished (or running) study as kvopt describes it, read from its storage alone.

    The same description the end of a run prints and writes: results, front, baseline, the
    (confirmed) recommendation, every trial as plain data, and the Optuna study itself.
    """

    name: str
    storage: str  # masked label: never a password
    attrs: dict[str, Any]
    results: list[Result]
    front: list[Result]
    baseline: Result | None
    recommendation: Recommendation | None
    trials: list[dict[str, Any]]
    study: optuna.Study

    @property
    def model(self) -> str:
        """The model's name as the study stored it (``?`` if missing)."""
        return str(self.attrs.get("model", "?"))

    @property
    def engine(self) -> str:
        """The engine that ran the study (studies stored before engines had names: transformers)."""
        return str(self.attrs.get(ENGINE_ATTR, DEFAULT_ENGINE))

    @property
    def profile(self) -> str:
        """The profile's name as the study stored it (``?`` if missing)."""
        return str(self.attrs.get("profile", "?"))

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The stored confirmation, if it still applies to the study's recommendation."""
        rec = self.recommendation
        return self.attrs.get("confirmation") if rec is not None and rec.confirmed_rounds else None


def default_storage_url() -> str:
    """The storage a plain ``python -m kvopt`` run uses: conf/config.yaml's default group."""
    from omegaconf import DictConfig, OmegaConf

    root = Path(conf_dir())
    top, option_files = OmegaConf.load(root / "config.yaml"), root / "storage"
    assert isinstance(top, DictConfig)  # config.yaml is a mapping
    option = next(d["storage"] for d in top["defaults"] if isinstance(d, DictConfig) and "storage" in d)
    storage = OmegaConf.load(option_files / f"{option}.yaml")
    assert isinstance(storage, DictConfig)
    return str(storage["url"])


def storage_config(storage_url: str) -> StorageConfig:
    """A URL with ``://`` is a database; anything else names a journal file."""
    if "://" in storage_url:
        return StorageConfig(backend="rdb", url=storage_url)
    return StorageConfig(backend="journal", url=storage_url)


def open_existing_storage(storage_url: str) -> tuple[BaseStorage, str]:
    """Open a storage that must already exist; return it and its printable label.

    Unlike a run, reading never creates anything: a SQLite or journal path that is not
    there is an error, not a new empty file.
    """
    if not storage_url:
        raise StorageError(f"storage.url: got ''; allowed: {_KINDS}")
    cfg = storage_config(storage_url)
    local = storage_url if cfg.backend == "journal" else sqlite_path(storage_url)
    if local is not None and not Path(local).expanduser().is_file():
        raise StorageError(
            f"storage.url: got {mask_url(storage_url)!r} but the file {str(Path(local).expanduser())!r} "
            f"does not exist; allowed: {_KINDS}"
        )
    label = describe_storage(cfg)
    try:
        return open_storage(cfg), label
    except StorageError:
        raise
    except Exception as exc:  # a file that is not an Optuna storage of this kind
        raise StorageError(f"storage.url: cannot read {label} ({_reason(exc)}); allowed: {_KINDS}") from None


def _reason(exc: Exception) -> str:
    return mask_urls(f"{type(exc).__name__}: {exc}".splitlines()[0])[:200]


def parse_source(arg: str, default_storage: str, field: str = "study") -> tuple[str, str]:
    """``STUDY`` or ``STUDY@STORAGE_URL`` -> (study, storage URL); ``default_storage`` without ``@``.

    Raises:
        KvoptError: one line naming ``field`` when ``arg`` is neither form.
    """
    study, sep, storage = arg.partition("@")
    if not study or (sep and not storage):
        raise KvoptError(f"{field}: got {arg!r}; allowed: STUDY or STUDY@STORAGE_URL")
    return study, storage if sep else default_storage


def load_study(study_name: str, storage_url: str) -> StoredStudy:
    """The study ``study_name`` in ``storage_url``; KvoptError with one clear line if not there."""
    storage, label = open_existing_storage(storage_url)
    try:
        names = optuna.get_all_study_names(storage=storage)
    except Exception as exc:  # not an Optuna storage, a corrupt file, a server that went away
        raise StorageError(f"storage.url: cannot read studies from {label} ({_reason(exc)})") from None
    if study_name not in names:
        have = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise StorageError(f"study.name: got {study_name!r} but {label} has no such study; studies there: {have}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    return stored_study(study, label)


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial of the study as plain data: the ``trials`` of results.json and of the report."""
    records = []
    for t in study.get_trials(deepcopy=False):
        records.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "values": list(t.values) if t.values is not None else None,
                "reason": t.user_attrs.get(REASON_ATTR),
                "baseline": bool(t.user_attrs.get(BASELINE_ATTR)),
                "user_attrs": dict(t.user_attrs),
                "duration_s": t.duration.total_seconds() if t.duration else None,
            }
        )
    return records


def stored_study(study: optuna.Study, storage_label: str) -> StoredStudy:
    """Everything the report needs, derived from the study's stored trials and attrs."""
    attrs = dict(study.user_attrs)
    profile_section = (attrs.get("config") or {}).get("profile")
    if not isinstance(profile_section, dict):
        raise StorageError(
            f"study.name: {study.study_name!r} in {storage_label} has no stored kvopt config "
            "(it was not made by kvopt); allowed: a study kvopt ran"
        )
    try:
        profile = validate_profile(profile_section)
    except ConfigError as exc:
        raise StorageError(f"study {study.study_name!r}: its stored profile is not valid: {exc}") from None
    results = collect_results(study)
    rec = recommend(results, profile)
    confirmation = attrs.get("confirmation")
    if rec is not None and isinstance(confirmation, dict):
        rec = confirmed_recommendation(rec, results, confirmation)
    return StoredStudy(
        name=study.study_name,
        storage=storage_label,
        attrs=attrs,
        results=results,
        front=pareto_front(results),
        baseline=next((r for r in results if r.is_baseline), None),
        recommendation=rec,
        trials=trial_records(study),
        study=study,
    )
