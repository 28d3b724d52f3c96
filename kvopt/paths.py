"""Where things are on disk: the shipped configs, atomic file writes, a SQLite URL's file.

Foundation: imports nothing from kvopt, so every layer may use it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["conf_dir", "sqlite_path", "write_text_atomic", "write_json_atomic", "write_csv_atomic", "SQLITE_PREFIX"]

# Optuna's RDB URL of a SQLite file: everything after the prefix is the file's path.
SQLITE_PREFIX = "sqlite:///"


def conf_dir() -> str:
    """The shipped Hydra configs: ``conf/`` in a source checkout, ``kvopt/conf`` in a wheel.

    The checkout's own folder comes first: an editable install made from another checkout
    maps ``kvopt.conf`` there, and this code must read the configs it ships with.
    """
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").is_file() and (checkout / "profile").is_dir():
        return str(checkout)
    try:
        packaged = Path(str(resources.files("kvopt.conf")))
        if (packaged / "config.yaml").is_file():
            return str(packaged)
    except ModuleNotFoundError:
        pass
    return str(checkout)


def sqlite_path(url: str) -> str | None:
    """The file path of a ``sqlite:///PATH`` URL, as written (not expanded); None for other URLs."""
    return url[len(SQLITE_PREFIX) :] if url.startswith(SQLITE_PREFIX) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader (or a dashboard upload) never sees half a file.

    The text goes to a hidden temporary file beside ``path`` (named by this process, so two
    writers never share one), which then replaces ``path``. Missing parent folders are made.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json_atomic(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON (anything JSON lacks written as ``str``), atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_csv_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """One CSV row per mapping (columns from the first row), atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
