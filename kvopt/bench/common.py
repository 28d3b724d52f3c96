"""What every benchmark script needs: a validated config, provenance, clean failures."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kvopt.config import KvoptConfig
from kvopt.errors import KvoptError

__all__ = ["compose_config", "load_average", "provenance", "write_json", "write_csv", "script_main"]


def compose_config(model: str, profile: str, overrides: list[str]) -> KvoptConfig:
    """The same validated config ``python -m kvopt model=… profile=… <overrides>`` builds."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from kvopt.cli import conf_dir, quiet_libraries, unknown_group_options
    from kvopt.config import validate
    from kvopt.errors import ConfigError

    quiet_libraries()
    args = [f"model={model}", f"profile={profile}", *overrides]
    problems = unknown_group_options(args, conf_dir())
    if problems:
        raise ConfigError(problems)
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        try:
            composed = compose(config_name="config", overrides=args)
        except HydraException as exc:
            raise ConfigError([f"overrides: {exc}"]) from None
    return validate(composed)


def load_average() -> float:
    """The 1-minute load average: this machine is shared, so every figure carries it."""
    return os.getloadavg()[0]


def provenance() -> dict[str, Any]:
    from kvopt.machine import machine_info

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted benchmark never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def script_main(main: Callable[[], None]) -> None:
    """Run a benchmark's main: a user error is one line on stderr and exit status 2."""
    try:
        main()
    except KvoptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
