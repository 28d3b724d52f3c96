"""``python -m kvopt dashboard [storage.url=URL] [port=N]``: optuna-dashboard on 127.0.0.1.

The storage is served with kvopt's artifact store beside it (:mod:`kvopt.report.dashboard`
says what each study carries there).
"""

from __future__ import annotations

from optuna.artifacts import FileSystemArtifactStore

from kvopt.compose import parse_key_values
from kvopt.errors import ConfigError, KvoptError, print_error
from kvopt.report.dashboard import artifact_dir

__all__ = ["dashboard_command", "DASHBOARD_USAGE"]

DASHBOARD_USAGE = (
    "usage: python -m kvopt dashboard [storage.url=URL] [port=N]\n"
    "  storage.url: default the storage of conf/config.yaml (sqlite:///kvopt.db)\n"
    "  port: default 8080; the server listens on 127.0.0.1 only"
)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError([f"port: got {value!r}; allowed: an integer from 1 to 65535"])
    return int(value)


def dashboard_command(args: list[str]) -> int:
    """``python -m kvopt dashboard``: serve a storage with optuna-dashboard on 127.0.0.1.

    Args:
        args: optionally ``storage.url=URL`` and ``port=N``.

    Returns:
        0 when the server stops (Ctrl-C), 2 after printing what is wrong with the input.
    """
    if any(a in ("-h", "--help") for a in args):
        print(DASHBOARD_USAGE)
        return 0
    from optuna_dashboard import run_server

    from kvopt.stored import default_storage_url, open_existing_storage, storage_config

    try:
        given = parse_key_values(args, {"storage.url": "storage URL", "port": "port number"})
        port = _port(given.get("port", "8080"))
        url = given.get("storage.url") or default_storage_url()
        storage, label = open_existing_storage(url)
        artifacts = artifact_dir(storage_config(url))
        assert artifacts is not None  # open_existing_storage accepts no in-memory storage
        artifacts.mkdir(parents=True, exist_ok=True)
    except KvoptError as exc:
        print_error(str(exc))
        return 2
    print(
        f"optuna-dashboard: http://127.0.0.1:{port}/ (storage {label}; artifacts {artifacts}); Ctrl-C stops it",
        flush=True,
    )
    try:
        run_server(storage, host="127.0.0.1", port=port, artifact_store=FileSystemArtifactStore(str(artifacts)))
    except OSError as exc:  # the port is taken, or not ours to bind
        why = exc.strerror or exc
        print_error(f"port: got {port} but the server cannot listen there ({why}); allowed: a free port")
        return 2
    except KeyboardInterrupt:
        pass
    return 0
