"""``python -m kvopt report study.name=NAME [storage.url=URL] [out=DIR]``: the report of a
stored study, re-created from its storage alone (the same files a run writes at its end)."""

from __future__ import annotations

import re
from pathlib import Path

from kvopt.compose import parse_key_values
from kvopt.errors import ConfigError, KvoptError, print_error

__all__ = ["report_command", "REPORT_USAGE"]

REPORT_USAGE = (
    "usage: python -m kvopt report study.name=NAME [storage.url=URL] [out=DIR]\n"
    "  storage.url: default the storage of conf/config.yaml (sqlite:///kvopt.db)\n"
    "  out: default reports/<study name>/; writes report.md, report.html, plots/*.svg"
)


def _folder_name(study: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study).strip("._") or "study"


def report_command(args: list[str]) -> int:
    """``python -m kvopt report``: write a stored study's report; return the exit status.

    Args:
        args: ``study.name=NAME``, optionally ``storage.url=URL`` and ``out=DIR``.

    Returns:
        0 when the report was written, 2 after printing what is wrong with the input.
    """
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
