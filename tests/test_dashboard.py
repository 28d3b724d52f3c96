"""optuna-dashboard opens a kvopt study: metric names, parameters and per-trial details."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from kvopt.config import validate
from kvopt.paths import conf_dir
from kvopt.runner import tune
from report_helpers import free_port


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_dashboard_serves_the_study_with_its_metric_names(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'kvopt.db'}"
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = validate(
            compose(
                config_name="config",
                overrides=[
                    "model=tiny-gpt2",
                    "profile=ci-micro",
                    "study.n_trials=2",
                    f"storage.url={url}",
                ],
            )
        )
    tune(cfg)

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        studies = None
        while time.monotonic() < deadline:
            try:
                studies = _get(f"{base}/api/studies")
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer within 60 s"
        summary = next(s for s in studies["study_summaries"] if s["study_name"] == "tiny-gpt2-ci-micro-cpu")
        detail = _get(f"{base}/api/studies/{summary['study_id']}")
        assert detail["objective_names"] == ["ttft_ms", "decode_tok_s", "peak_mem_mb"]
        trial = detail["trials"][0]
        params = {p["name"] for p in trial["params"]}
        assert params == {"cache_implementation", "attn_implementation", "dtype", "batch_size"}
        attrs = {a["key"] for a in trial["user_attrs"]}
        assert {"baseline", "candidate", "ttft_ms_raw", "kv_cache_mb"} <= attrs
    finally:
        server.terminate()
        server.wait(timeout=10)
