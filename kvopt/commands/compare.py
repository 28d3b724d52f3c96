"""``python -m kvopt compare A B [storage.url=URL]``: two stored studies side by side.

A and B are ``STUDY`` (in ``storage.url``, default ``sqlite:///kvopt.db``) or
``STUDY@STORAGE_URL`` (e.g. ``gpt2-rag-cuda@sqlite:///h100.db``); the comparison itself is
:mod:`kvopt.report.compare`.
"""

from __future__ import annotations

from rich.console import Console

from kvopt.env import quiet_libraries
from kvopt.errors import KvoptError, print_error
from kvopt.report.compare import compare_studies, print_comparison
from kvopt.stored import default_storage_url, load_study, parse_source

__all__ = ["compare_command", "USAGE"]

USAGE = (
    "usage: python -m kvopt compare A B [storage.url=URL]\n"
    "  A, B: STUDY (a study in storage.url, default sqlite:///kvopt.db) or STUDY@STORAGE_URL\n"
    "  e.g.: python -m kvopt compare gpt2-rag-cuda@sqlite:///h100.db gpt2-rag-cuda@sqlite:///a100.db"
)


def compare_command(args: list[str]) -> int:
    """Entry of ``python -m kvopt compare``; returns the exit status (2 on bad input)."""
    if any(a in ("-h", "--help") for a in args):
        Console(soft_wrap=True).print(USAGE, highlight=False, markup=False)
        return 0
    storage = ""  # default: the storage a plain run uses (conf/config.yaml), read when needed
    positional = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key == "storage.url":
            storage = value
        elif sep and "@" not in key:
            print_error(f"compare: got {arg!r}; allowed: storage.url=URL\n{USAGE}")
            return 2
        else:
            positional.append(arg)
    if len(positional) != 2:
        print_error(
            f"compare: got {len(positional)} study argument(s) {positional}; allowed: exactly two, A and B\n{USAGE}"
        )
        return 2
    quiet_libraries()
    try:
        sources = [parse_source(arg, storage or default_storage_url(), "compare") for arg in positional]
    except KvoptError as exc:
        print_error(f"{exc}\n{USAGE}")
        return 2
    try:
        a, b = (load_study(*source) for source in sources)
    except KvoptError as exc:
        print_error(str(exc))
        return 2
    print_comparison(Console(soft_wrap=False), compare_studies(a, b))
    return 0
