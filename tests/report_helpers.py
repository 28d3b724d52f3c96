"""A real study made through the CLI, shared by the report and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import optuna

STUDY = "tiny-gpt2-ci-micro-cpu"


def free_port() -> int:
    """A loopback port nothing listens on right now (for a dashboard server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_kvopt(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, "-m", "kvopt", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def make_study(root: Path, *overrides: str) -> dict:
    """``python -m kvopt`` on tiny-gpt2/ci-micro into ``root/kvopt.db``, run folder ``root/run``."""
    url = f"sqlite:///{root / 'kvopt.db'}"
    proc = run_kvopt(
        "model=tiny-gpt2",
        "profile=ci-micro",
        f"storage.url={url}",
        f"hydra.run.dir={root / 'run'}",
        # Random weights: lossy dtypes are timed (and marked) only with allow_unverified; the
        # report tests need every trial complete, as before the quality guard (kvopt.quality).
        "quality.allow_unverified=true",
        *overrides,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "url": url, "run": root / "run", "stdout": proc.stdout}


HOSTILE = '<script>alert("kvopt")</script>'


def hostile_copy(url: str) -> str:
    """A copy of the study whose name, model and candidate labels carry markup; returns its name.

    Stored strings reach the report from anywhere (a study name, a model name, a label),
    so every one must come out as text, never as markup.
    """
    source = optuna.load_study(study_name=STUDY, storage=url)
    name = f"{HOSTILE} study"
    copy = optuna.create_study(study_name=name, storage=url, directions=source.directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is experimental
        copy.set_metric_names(source.metric_names)
    for key, value in source.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.set_user_attr("model", HOSTILE)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    copy.add_trials(
        [
            optuna.trial.create_trial(
                state=t.state,
                params=t.params,
                distributions=t.distributions,
                values=t.values if t.state == optuna.trial.TrialState.COMPLETE else None,
                user_attrs={
                    **t.user_attrs,
                    "candidate": f"<img src=x onerror=alert(1)>{t.user_attrs.get('candidate')}",
                },
                system_attrs=t.system_attrs,
            )
            for t in source.get_trials(states=finished)
        ]
    )
    return name
