"""Opening the Optuna storage named by the config, with messages a user can act on."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from kvopt.config import StorageConfig
from kvopt.errors import StorageError
from kvopt.paths import SQLITE_PREFIX, sqlite_path

__all__ = ["open_storage", "mask_url", "mask_urls", "describe_storage", "study_lock"]

_ALLOWED = "sqlite:///file.db, postgresql://user@host/db, mysql://…, or storage=journal / storage=memory"


def mask_url(url: str | None) -> str:
    """The URL with any password replaced, safe to print, log or write into a report."""
    if not url:
        return "(in memory)"
    return mask_urls(url)


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced."""
    # No whitespace inside a URL: a match never spans two lines of a log or a YAML file.
    return re.sub(r"(://[^/@:\s]*):[^@/\s]*@", r"\1:***@", text)


def describe_storage(cfg: StorageConfig) -> str:
    """The storage in words, safe to print: a file's absolute path, a URL without its password."""
    if cfg.backend == "memory":
        return "memory (nothing is kept after the run)"
    if cfg.backend == "journal":
        return f"journal file {Path(str(cfg.url)).resolve()}"
    url = str(cfg.url)
    local = sqlite_path(url)
    if local is not None:
        return f"{SQLITE_PREFIX}{Path(local).resolve()}"
    return mask_url(url)


def _driver_url(url: str) -> str:
    """``postgresql://`` with the driver kvopt ships (psycopg2-binary).

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, older ones to psycopg2; name
    psycopg2 unless psycopg 3 is installed. An explicit ``postgresql+driver://`` is kept.
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _check_parent(path: Path, key: str, given: str) -> None:
    if not path.parent.is_dir():
        raise StorageError(
            f"{key}: got {mask_urls(given)!r} but the folder {mask_urls(str(path.parent))!r} does not exist; "
            f"allowed: a file in an existing folder"
        )


def open_storage(
    cfg: StorageConfig,
    *,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    on_stale: Callable[[Any, Any], object] | None = None,
) -> BaseStorage:
    """Open (or create) the storage; raise :class:`StorageError` naming what to fix.

    With ``heartbeat_s``, an RDB storage records a heartbeat for each running trial, and
    any worker fails a trial silent for ``grace_s`` seconds and calls ``on_stale`` with it
    (Optuna's heartbeat; the journal storage has none, see :mod:`kvopt.workers`).
    """
    if cfg.backend == "memory":
        return InMemoryStorage()
    url = str(cfg.url)
    if cfg.backend == "journal":
        path = Path(url).expanduser()
        _check_parent(path, "storage.url", url)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"storage.url: cannot open journal file {url!r}: {exc}") from None
    engine_kwargs: dict[str, object] = {}
    local = sqlite_path(url)
    if local is not None:
        _check_parent(Path(local).expanduser(), "storage.url", url)
    elif url.startswith(("postgresql", "mysql")):
        # Fail within seconds when the server is unreachable, instead of the driver's default.
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    heartbeat: dict[str, Any] = {}
    if heartbeat_s is not None:
        heartbeat = {
            "heartbeat_interval": heartbeat_s,
            "grace_period": grace_s,
            "heartbeat_stale_trial_callback": on_stale,
        }
    try:
        return _open_rdb(_driver_url(url), engine_kwargs, heartbeat)
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage.url: {mask_url(url)!r} needs the database driver {exc.name!r}; "
            f"install it (for PostgreSQL: pip install psycopg2-binary)"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many types; all mean "cannot open"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = mask_urls(reason.replace(url, mask_url(url)))
        if "DB access module" in reason:
            reason += " For PostgreSQL: pip install psycopg2-binary."
        raise StorageError(
            f"storage.url: cannot open {mask_url(url)!r} ({reason[:200]}); allowed: {_ALLOWED}"
        ) from None


def _open_rdb(url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]) -> RDBStorage:
    # Workers starting together on an empty database all create Optuna's tables; the
    # losers of that race get a duplicate-key error, and the tables exist a moment later.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)  # heartbeat_interval
                return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
        except Exception as exc:
            text = str(exc)
            if attempt == 4 or not ("duplicate key" in text or "already exists" in text):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _lock_key(name: str) -> int:
    # A signed 64-bit key from the study name, for database advisory locks.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX; the kernel drops the lock if the process dies

    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def study_lock(cfg: StorageConfig, storage: BaseStorage, name: str) -> Iterator[None]:
    """Hold a lock on study ``name`` across every worker that shares the storage.

    Racing workers create the study, set its attrs and queue the baseline one at a time,
    so the baseline is queued once. PostgreSQL and MySQL: a database advisory lock (works
    across hosts, released if the connection drops); SQLite and journal files: a file lock
    beside the file (one host); memory: nothing to share.
    """
    if cfg.backend == "memory":
        yield
        return
    url = str(cfg.url)
    if cfg.backend == "journal":
        with _file_lock(Path(url).expanduser().with_name(Path(url).name + ".kvopt-lock")):
            yield
        return
    local = sqlite_path(url)
    if local is not None:
        db = Path(local).expanduser()
        with _file_lock(db.with_name(db.name + ".kvopt-lock")):
            yield
        return
    if not url.startswith(("postgresql", "mysql")) or not isinstance(storage, RDBStorage):
        yield  # another database: no portable lock; Optuna's own transactions apply
        return
    import sqlalchemy

    postgres = url.startswith("postgresql")
    with storage.engine.connect() as conn:
        if postgres:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _lock_key(name)})
        else:
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": f"kvopt:{name}"[:64]})
        conn.commit()
        try:
            yield
        finally:
            if postgres:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(name)})
            else:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": f"kvopt:{name}"[:64]})
            conn.commit()
