"""``python -m kvopt report study.name=NAME [storage.url=URL] [out=DIR]``: the report of a
stored study, re-created from its storage alone (the same files a run writes at its end)."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path

from kvopt.errors import ConfigError, KvoptError

__all__ = ["parse_key_values", "report_command", "print_error"]

REPORT_USAGE = (
    "usage: python -m kvopt report study.name=NAME [storage.url=URL] [out=DIR]\n"
    "  storage.url: default the storage of conf/config.yaml (sqlite:///kvopt.db)\n"
    "  out: default reports/<study name>/; writes report.md, report.html, plots/*.svg"
)


def print_error(message: str) -> None:
    print(f"kvopt: error: {message}", file=sys.stderr)


def parse_key_values(args: list[str], allowed: Mapping[str, str]) -> dict[str, str]:
    """``key=value`` arguments; ConfigError naming each unknown or malformed one.

    ``allowed`` maps each key to what it takes, for the message.
    """
    values: dict[str, str] = {}
    problems = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            keys = ", ".join(f"{k}=<{what}>" for k, what in allowed.items())
            problems.append(f"argument {arg!r}: allowed: {keys}")
        else:
            values[key] = value
    if problems:
        raise ConfigError(problems)
    return values


def _folder_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._") or "study"


def report_command(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(REPORT_USAGE)
        return 0
    try:
        given = parse_key_values(args, {"study.name": "study name", "storage.url": "storage URL", "out": "folder"})
    except KvoptError as exc:
        print_error(str(exc))
        return 2
    # Imported after the arguments check out: they pull in torch and transformers.
    from kvopt.report.files import write_report
    from kvopt.stored import default_storage_url, load_study

    try:
        # No study.name: load_study's message lists the studies the storage holds.
        stored = load_study(given.get("study.name", ""), given.get("storage.url") or default_storage_url())
        out = Path(given.get("out") or Path("reports") / _folder_name(stored.name))
        if out.exists() and not out.is_dir():
            raise ConfigError([f"out: got {str(out)!r} but it is a file; allowed: a folder (made if missing)"])
        files = write_report(stored, out)
    except KvoptError as exc:
        print_error(str(exc))
        return 2
    for path in (files.html, files.markdown):
        print(f"wrote {path}")
    return 0
