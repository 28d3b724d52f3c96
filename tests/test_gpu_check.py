"""scripts/gpu_check.py: its dry run does every step of the GPU check on the CPU, so it cannot rot."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"
STEPS = ["info", "study", "study_full", "memory", "noise", "oom"]
FILES = {
    "summary.json",
    "gpu_check.log",
    "kvopt.db",
    "results_study.json",
    "results_study_full.json",
    "results_oom.json",
    "noise.json",
}


def gpu_check(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)  # the device tool's variable must not leak into a test
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "out"
    return gpu_check("--dry-run", "--out", str(out), cwd=work, timeout=600), out


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_records_it(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run" and summary["device"] == "cpu" and summary["ok"] is True
    assert summary["finished_at"] and 0 < summary["wall_s"] <= summary["budget_s"]
    assert summary["environment"]["versions"]["transformers"] and summary["machine"]["versions"]["torch"]
    assert [s["name"] for s in summary["steps"]] == STEPS
    for step in summary["steps"]:
        assert step["status"] == "ok", step
        assert step["command"] and step["seconds"] > 0 and step["seconds"] <= step["cap_s"] and step["error"] is None
        assert step["checks"] and all(step["checks"].values()), step["checks"]
    # At most 8 files, flat: what the device tool brings back.
    written = {p.name for p in out.iterdir()}
    assert written == FILES == set(summary["files"]) and len(written) <= 8
    assert all(p.is_file() for p in out.iterdir())
    log = (out / "gpu_check.log").read_text()
    assert all(f"{name}: ok" in log for name in STEPS)


@pytest.mark.slow
def test_the_dry_run_records_what_each_step_found(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = dry_run
    steps = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    for name, results in (("study", "results_study.json"), ("study_full", "results_study_full.json")):
        facts = steps[name]["facts"]
        assert facts["device"] == "cpu" and facts["trials_by_state"].get("COMPLETE", 0) >= 1
        assert json.loads((out / results).read_text())["study_name"] == facts["study_name"]
    rows = steps["memory"]["facts"]["rows"]
    assert [r["candidate"].rsplit("/b", 1)[1] for r in rows] == ["1", "4"]
    for row in rows:
        assert row["predicted_mb"]["predicted_mem_mb"] > 0 and row["measured_mb"]["peak"] > 0
        assert "peak" in row["prediction_error_pct"]
    assert [c["mode"] for c in steps["noise"]["facts"]["cases"]] == ["fixed"]
    oom = steps["oom"]["facts"]
    assert oom["batch_larger"] == 2 * oom["batch_oom"] and oom["prediction_alone_would_prune"]
    states = {t["candidate"]: (t["state"], t["reason"]) for t in oom["trials"]}
    big = states[f"dynamic/eager/float32/b{oom['batch_oom']}"]
    assert big[0] == "PRUNED" and big[1].startswith("out of memory: ")
    assert states[f"dynamic/eager/float32/b{oom['batch_larger']}"][0] == "PRUNED"
    # The studies' storage came back: kvopt report can rebuild any of them.
    assert (out / "kvopt.db").stat().st_size > 0


def _module():
    """The script as a module (scripts/ is not a package), registered so its dataclasses resolve."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules["gpu_check"]


def test_a_step_past_its_cap_is_stopped_and_recorded_and_the_next_still_runs(tmp_path: Path, monkeypatch) -> None:
    gc = _module()
    monkeypatch.setattr(gc, "GRACE_S", 1.0)
    monkeypatch.setattr(gc, "MIN_CAP_S", 1.0)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setitem(gc.STEPS, "info", ("sleeps past its cap", lambda run, step: sleeper))
    monkeypatch.setitem(gc.STEPS, "study", ("fails", lambda run, step: [sys.executable, "-c", "raise SystemExit(3)"]))
    plan = dataclasses.replace(gc.dry_plan(60), caps={**gc.dry_plan(60).caps, "info": 3})
    run = gc.Run(plan, tmp_path, ["info", "study"])
    slept, failed = gc.run_step(run, "info", 1), gc.run_step(run, "study", 2)
    run.summary["steps"] = [dataclasses.asdict(slept), dataclasses.asdict(failed)]
    run.close()
    assert slept.status == "timed out" and slept.seconds < 10 and "cap of 3 s" in slept.error
    assert failed.status == "failed" and failed.returncode == 3 and failed.checks == {"results_written": False}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False and [s["status"] for s in summary["steps"]] == ["timed out", "failed"]


def test_a_spent_budget_skips_the_remaining_steps(tmp_path: Path) -> None:
    gc = _module()
    run = gc.Run(gc.dry_plan(5), tmp_path, ["memory"])
    step = gc.run_step(run, "memory", 1)
    run.close()
    assert step.status == "skipped" and "--budget-s 5" in step.error


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-run", "--budget-s", "0"], "--budget-s: got 0"),
        ([], "no CUDA device here"),  # this machine has no GPU: the GPU plan is refused
    ],
)
@pytest.mark.slow
def test_bad_input_is_one_message_and_exit_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = gpu_check(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_an_output_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    proc = gpu_check("--dry-run", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
