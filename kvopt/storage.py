"""Opening the Optuna storage named by the config, with messages a user can act on."""

from __future__ import annotations

import re
from pathlib import Path

from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from kvopt.config import StorageConfig
from kvopt.errors import StorageError

__all__ = ["open_storage", "mask_url", "describe_storage"]

_ALLOWED = "sqlite:///file.db, postgresql://user@host/db, mysql://…, or storage=journal / storage=memory"


def mask_url(url: str | None) -> str:
    """The URL with any password replaced, safe to print, log or write into a report."""
    if not url:
        return "(in memory)"
    return re.sub(r"(://[^/@:]*):[^@/]*@", r"\1:***@", url)


def describe_storage(cfg: StorageConfig) -> str:
    if cfg.backend == "memory":
        return "memory (nothing is kept after the run)"
    if cfg.backend == "journal":
        return f"journal file {Path(str(cfg.url)).resolve()}"
    url = str(cfg.url)
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"
    return mask_url(url)


def _check_parent(path: Path, key: str, given: str) -> None:
    if not path.parent.is_dir():
        raise StorageError(
            f"{key}: got {given!r} but the folder {str(path.parent)!r} does not exist; "
            f"allowed: a file in an existing folder"
        )


def open_storage(cfg: StorageConfig) -> BaseStorage:
    """Open (or create) the storage; raise :class:`StorageError` naming what to fix."""
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
    if url.startswith("sqlite:///"):
        _check_parent(Path(url[len("sqlite:///") :]).expanduser(), "storage.url", url)
    elif url.startswith(("postgresql", "mysql")):
        # Fail within seconds when the server is unreachable, instead of the driver's default.
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage.url: {mask_url(url)!r} needs the database driver {exc.name!r}; "
            f"install it (for PostgreSQL: pip install psycopg2-binary)"
        ) from None
    except Exception as exc:  # SQLAlchemy raises many types; all mean "cannot open"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(url, mask_url(url))
        if "DB access module" in reason:
            reason += " For PostgreSQL: pip install psycopg2-binary."
        raise StorageError(
            f"storage.url: cannot open {mask_url(url)!r} ({reason[:200]}); allowed: {_ALLOWED}"
        ) from None

