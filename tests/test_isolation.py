"""Trials in fresh processes: results, peak RSS, and crashes or hangs that cost one trial."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from kvopt.config import validate
from kvopt.measure.memory import MB
from kvopt.measure.rss import PeakRSS
from kvopt.paths import conf_dir
from kvopt.runner import tune


def _config(tmp_path, *overrides):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return validate(
            compose(
                config_name="config",
                overrides=[
                    "model=tiny-gpt2",
                    "profile=ci-micro",
                    "trial.isolation=process",
                    f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
                    "confirm.rounds=0",
                    "measure.adaptive=false",
                    "search_space.dtype=[float32]",
                    *overrides,
                ],
            )
        )


def test_peak_rss_catches_a_short_allocation_spike():
    with PeakRSS() as peak:
        spike = torch.ones(256 * MB // 4)  # 256 MB, touched, then freed at once
        del spike
    assert peak.bytes - peak.start_bytes >= 250 * MB


@pytest.mark.slow
def test_a_process_trial_reports_measurements_and_peak_rss(tmp_path):
    result = tune(_config(tmp_path, "study.n_trials=1"))
    outcome = result.outcomes[0]
    assert outcome.state == TrialState.COMPLETE and outcome.is_baseline
    attrs = result.results[0].user_attrs
    assert attrs["isolation"] == "process"
    assert attrs["peak_rss_mb"] >= attrs["rss_after_load_mb"] > 0
    assert attrs["kv_cache_mb"] > 0 and attrs["setup_s"] > 0


def _kill_trial_process_once(stop: threading.Event) -> None:
    """Kill the first spawned trial process as soon as it appears (a real SIGKILL)."""
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    time.sleep(0.5)
                    child.kill()
                    return
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_trial_process_is_recorded_and_the_study_goes_on(tmp_path):
    stop = threading.Event()
    killer = threading.Thread(target=_kill_trial_process_once, args=(stop,), daemon=True)
    killer.start()
    try:
        result = tune(
            _config(
                tmp_path,
                "study.n_trials=3",
                "sampler=grid",
                "search_space.batch_size=[1,2]",
                "search_space.cache_implementation=[dynamic]",
                "search_space.attn_implementation=[sdpa]",
            )
        )
    finally:
        stop.set()
    first = result.outcomes[0]
    assert first.state == TrialState.PRUNED  # infeasible: samplers learn from it
    assert first.reason == "trial process killed by SIGKILL"
    # The study went on and measured the other candidate in a new process.
    assert any(o.state == TrialState.COMPLETE for o in result.outcomes[1:])


@pytest.mark.slow
def test_a_trial_over_its_timeout_is_killed_and_recorded(tmp_path):
    result = tune(_config(tmp_path, "study.n_trials=1", "trial.timeout_s=0.5"))
    outcome = result.outcomes[0]
    assert outcome.state == TrialState.PRUNED
    assert outcome.reason == "trial exceeded trial.timeout_s=0.5 s and was killed"
    assert len(psutil.Process().children()) <= 1  # at most the resource tracker remains
