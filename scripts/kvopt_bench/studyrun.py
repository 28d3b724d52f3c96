"""Run a whole kvopt study as a user does (``python -m kvopt …``) and keep its timeline.

The study runs in a fresh process with a fresh SQLite storage in a temporary folder.
Besides the process's wall time and its results.json, the trials' start and end times
are read back from the storage, so the benchmarks can say where the wall time went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kvopt.errors import KvoptError
from kvopt_bench.common import load_average

__all__ = ["run_study", "TRIAL_TIME_ATTRS"]

# Per-trial seconds the measurement protocol stores (kvopt.trial / kvopt.protocol).
TRIAL_TIME_ATTRS = (
    "load_s",
    "first_call_s",
    "memory_run_s",
    "warmup_s",
    "timed_runs_s",
    "trial_s",
    "device_wait_s",
)  # kvopt.workers: waiting for another process to free the device


def _timeline(db: Path, name: str) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "start": t.datetime_start.timestamp() if t.datetime_start else None,
                "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
                "reused": "reused_from" in t.user_attrs,
                **{k: t.user_attrs[k] for k in TRIAL_TIME_ATTRS if k in t.user_attrs},
            }
        )
    return out


def run_study(model: str, profile: str, extra: list[str], *, log_dir: Path, name: str) -> dict[str, Any]:
    """One CLI run; its terminal output and results.json are kept as ``log_dir/name.*``."""
    with tempfile.TemporaryDirectory() as work:
        db = Path(work) / "kvopt.db"
        cmd = [
            sys.executable,
            "-m",
            "kvopt",
            f"model={model}",
            f"profile={profile}",
            f"storage.url=sqlite:///{db}",
            f"hydra.run.dir={work}/run",
            *extra,
        ]
        load_before = load_average()
        started = time.time()
        proc = subprocess.run(
            cmd, cwd=work, capture_output=True, text=True, env={**os.environ, "COLUMNS": "100", "HF_HUB_OFFLINE": "1"}
        )
        ended = time.time()
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{name}.out.txt").write_text(proc.stdout + proc.stderr)
        results = Path(work) / "run" / "results.json"
        if proc.returncode != 0 or not results.is_file():
            raise KvoptError(f"{model}/{profile} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        (log_dir / f"{name}.results.json").write_text(results.read_text())
        payload = json.loads(results.read_text())
        timeline = _timeline(db, payload["study_name"])
    return {
        "model": model,
        "profile": profile,
        "overrides": extra,
        "command": " ".join(["python -m kvopt", *cmd[3:]]).replace(str(db), "<tmp>/kvopt.db").replace(work, "<tmp>"),
        "started_at": started,
        "ended_at": ended,
        "wall_s": ended - started,
        "load_1min_before": load_before,
        "load_1min_after": load_average(),
        "results": payload,
        "timeline": timeline,
    }
