"""optuna-dashboard for kvopt studies: what each study carries there.

At the end of a run the study gets a markdown note (recommendation, gains, front) and the
report (report.html, report.md, plots) as study artifacts, in a file artifact store beside
the storage: ``kvopt.db`` -> ``kvopt-artifacts/``. ``python -m kvopt dashboard``
(:mod:`kvopt.commands.dashboard`) serves the storage with that store on 127.0.0.1.
Constraint values are per-trial user attrs (``constraints``), which the dashboard lists
with each trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from kvopt.config import StorageConfig
from kvopt.paths import sqlite_path
from kvopt.report.files import ReportFiles, write_report
from kvopt.report.markdown import study_note

if TYPE_CHECKING:
    from kvopt.stored import StoredStudy

__all__ = ["artifact_dir", "publish_report", "publish_study"]

_ARTIFACTS_ATTR_PREFIX = "artifacts:"  # where Optuna keeps a study artifact's metadata


def artifact_dir(cfg: StorageConfig) -> Path | None:
    """The artifact folder for a storage: beside a SQLite or journal file, else ./kvopt-artifacts."""
    if cfg.backend == "memory" or not cfg.url:
        return None
    url = str(cfg.url)
    local = url if cfg.backend == "journal" else sqlite_path(url)
    if local is not None:
        path = Path(local).expanduser().resolve()
        return path.with_name(f"{path.stem}-artifacts")
    return Path("kvopt-artifacts").resolve()  # a database server: no file to sit beside


def _artifact_ids_named(study: optuna.Study, names: set[str]) -> list[str]:
    """Ids of the study's live artifacts with these file names.

    Read from the system attrs directly: a removed artifact's entry is null, which
    optuna.artifacts.get_all_artifact_meta cannot read (it raises on the second re-run).
    """
    ids = []
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if not key.startswith(_ARTIFACTS_ATTR_PREFIX):
            continue
        meta = json.loads(value) if isinstance(value, str) else value
        if isinstance(meta, dict) and meta.get("filename") in names:
            ids.append(str(meta["artifact_id"]))
    return ids


def _replace_artifacts(study: optuna.Study, store: FileSystemArtifactStore, paths: list[Path]) -> None:
    """Upload ``paths`` as study artifacts, dropping earlier ones of the same file name.

    A re-run of the study publishes a new report; the dashboard should show one, not a pile.
    Removal is what optuna-dashboard's own delete does: remove the file, null the metadata.
    """
    names = {p.name for p in paths}
    for artifact_id in _artifact_ids_named(study, names):
        try:
            store.remove(artifact_id)
        except ArtifactNotFound:
            pass
        study._storage.set_study_system_attr(  # no public API for this in Optuna 5
            study._study_id, _ARTIFACTS_ATTR_PREFIX + artifact_id, json.dumps(None)
        )
    for path in paths:
        upload_artifact(study_or_trial=study, file_path=str(path), artifact_store=store)


def publish_report(s: StoredStudy, files: ReportFiles, artifacts: Path | None) -> None:
    """The study note, and the report files as artifacts when the storage has a store."""
    from optuna_dashboard import save_note

    save_note(s.study, study_note(s, [p.name for p in files.all] if artifacts else []))
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        _replace_artifacts(s.study, FileSystemArtifactStore(str(artifacts)), files.all)


def publish_study(output_dir: Path, study: optuna.Study, storage_label: str, storage: StorageConfig) -> ReportFiles:
    """End of a run: write the report into the run's folder and publish it to the dashboard."""
    from kvopt.stored import stored_study

    s = stored_study(study, storage_label)
    files = write_report(s, output_dir)
    publish_report(s, files, artifact_dir(storage))
    return files
