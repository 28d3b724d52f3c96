"""The wheel ships the Hydra configs: kvopt runs from a wheel, away from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

# Builds and installs a wheel, then runs a study from it: minutes, and pip on the path.
pytestmark = [pytest.mark.wheel, pytest.mark.slow]


def test_the_wheel_carries_conf_and_runs_a_study(tmp_path: Path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wheel = next(wheel_dir.glob("kvopt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "kvopt/conf/config.yaml" in names
    assert "kvopt/conf/model/gpt2.yaml" in names
    assert "kvopt/conf/hydra/launcher/slurm.yaml" in names

    # Install the wheel's files alone into a folder and run from an unrelated directory,
    # so neither the checkout nor the editable install can supply the configs.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run(
        [sys.executable, "-c", "import kvopt.paths as p; print(p.__file__); print(p.conf_dir())"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(str(target) in line for line in where)
    run = subprocess.run(
        [sys.executable, "-m", "kvopt", "model=tiny-gpt2", "profile=ci-micro", "study.n_trials=2", "storage=memory"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "recommended:" in run.stdout
