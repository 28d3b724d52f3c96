"""What every benchmark script needs: a validated config, provenance, clean failures."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kvopt.compose import compose_config as _compose
from kvopt.config import KvoptConfig
from kvopt.env import quiet_libraries
from kvopt.errors import KvoptError, print_error
from kvopt.paths import write_csv_atomic, write_json_atomic

__all__ = ["quartiles", "compose_config", "load_average", "provenance", "write_json", "write_csv", "script_main"]

# Benchmarks write their tables atomically, so an interrupted one never leaves half a file.
write_json = write_json_atomic
write_csv = write_csv_atomic


def compose_config(model: str, profile: str, overrides: list[str]) -> KvoptConfig:
    """The same validated config ``python -m kvopt model=… profile=… <overrides>`` builds."""
    quiet_libraries()
    return _compose([f"model={model}", f"profile={profile}", *overrides])


def load_average() -> float:
    """The 1-minute load average: this machine is shared, so every figure carries it."""
    return os.getloadavg()[0]


def provenance() -> dict[str, Any]:
    """When, on what machine and by which command a benchmark figure was made."""
    from kvopt.machine import machine_info

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def script_main(main: Callable[[], None]) -> None:
    """Run a benchmark's main: a user error is one line on stderr and exit status 2."""
    try:
        main()
    except KvoptError as exc:
        print_error(str(exc))
        raise SystemExit(2) from None


def _quantile(ordered: list[float], p: float) -> float:
    """Linear-interpolation quantile that lets ``inf`` (never reached) through."""
    pos = p * (len(ordered) - 1)
    low, frac = int(pos), pos - int(pos)
    if frac == 0:
        return ordered[low]
    a, b = ordered[low], ordered[low + 1]
    return math.inf if math.isinf(b) else a + frac * (b - a)


def quartiles(values: Sequence[float]) -> dict[str, float | None]:
    """Median and interquartile range of replayed studies; None where they never got there (``inf``)."""
    ordered = sorted(values)
    q = {k: _quantile(ordered, p) for k, p in (("median", 0.5), ("q1", 0.25), ("q3", 0.75))}
    return {k: None if math.isinf(v) else v for k, v in q.items()}
