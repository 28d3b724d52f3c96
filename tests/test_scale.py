"""Scale out: many workers on one study (journal, PostgreSQL), crashes, Ctrl-C, sweeps.

Everything here runs for real: worker processes of the CLI, a PostgreSQL server started
on loopback in a temporary folder, SIGKILL and SIGINT sent to a worker mid-trial.
"""

from __future__ import annotations

import csv
import datetime
import glob
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from conftest import transformers_engine
from kvopt.config import ScaleConfig, StorageConfig
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.engine import TransformersLoader
from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
from kvopt.engines.transformers.workload import Workload
from kvopt.storage import open_storage
from kvopt.study import open_study
from kvopt.trial import Objective
from kvopt.workers import DeviceLock, Requeue, WorkerObjective, worker_identity
from scale_helpers import race_to_enqueue

STUDY = "tiny-gpt2-ci-micro-cpu"
# Small and quick: no confirmation rounds, a fixed number of timed runs.
# study.converge=false: these tests count trials; the convergence stop would end studies early.
# Random weights: lossy dtypes are timed only with allow_unverified (kvopt.quality); the
# scale tests count and retry trials of every candidate, as before the quality guard.
FAST = [
    "model=tiny-gpt2",
    "profile=ci-micro",
    "confirm.rounds=0",
    "measure.adaptive=false",
    "study.converge=false",
    "quality.allow_unverified=true",
]
PASSWORD = "Tr0ub4dor-x9q"


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


def _as_in_a_terminal() -> None:
    # A command typed in a terminal gets Ctrl-C. A test run started in the background of a
    # non-interactive shell (as CI may do) inherits SIGINT *ignored*, and Python then keeps
    # it ignored: the worker would never see the test's SIGINT. Restore the default first.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "kvopt", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def _measured(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and "reused_from" not in t.user_attrs]


def _assert_cooperated(study: optuna.Study, asked: int, workers: set[int]) -> list[optuna.trial.FrozenTrial]:
    """Every asked trial is there and finished, nothing measured twice, one baseline."""
    trials = study.get_trials()
    assert len(trials) == asked, [(t.number, t.state.name) for t in trials]
    assert all(t.state.is_finished() for t in trials), [(t.number, t.state.name) for t in trials]
    measured = _measured(trials)
    keys = [tuple(sorted(t.params.items())) for t in measured]
    assert len(keys) == len(set(keys)), f"a candidate was measured twice: {keys}"
    by_number = {t.number: t for t in trials}
    for t in trials:
        if "reused_from" in t.user_attrs and t.state == TrialState.COMPLETE:
            source = by_number[t.user_attrs["reused_from"]]
            assert source.params == t.params and source.values == t.values
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    assert {t.user_attrs["worker"]["index"] for t in trials} == workers
    return trials


def _overlapping_pairs(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[int, int]]:
    timed = sorted(
        (t for t in trials if "device_start" in t.user_attrs and "device_end" in t.user_attrs),
        key=lambda t: t.user_attrs["device_start"],
    )
    pairs = []
    for i, a in enumerate(timed):
        for b in timed[i + 1 :]:
            same_device = a.user_attrs["device_key"] == b.user_attrs["device_key"]
            if same_device and b.user_attrs["device_start"] < a.user_attrs["device_end"]:
                pairs.append((a.number, b.number))
    return pairs


def _summary_rows(root: Path) -> list[dict[str, str]]:
    found = list(root.glob("multirun/*/sweep_summary.csv"))
    assert len(found) == 1, found
    assert found[0].with_suffix(".md").is_file()
    with found[0].open(newline="") as f:
        return list(csv.DictReader(f))


# --- many workers, one study ---------------------------------------------------------


@pytest.mark.slow
def test_three_workers_share_a_journal_study_through_the_joblib_launcher(tmp_path):
    journal = tmp_path / "study.journal"
    proc = _start(
        "-m",
        "worker=0,1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        "storage=journal",
        f"storage.url={journal}",
        *FAST,
        "study.n_trials=3",
        f"scale.lock_dir={tmp_path / 'locks'}",
        cwd=tmp_path,
    )
    code, output = _finish(proc, timeout=400)
    assert code == 0, output
    study = optuna.load_study(study_name=STUDY, storage=_journal(journal))
    trials = _assert_cooperated(study, asked=9, workers={0, 1, 2})
    # scale.shared_device=wait (default): the workers took turns on the CPU, never overlapped.
    assert _overlapping_pairs(trials) == []
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 3  # three processes
    rows = _summary_rows(tmp_path)
    assert sorted(r["worker"] for r in rows) == ["0", "1", "2"]
    assert {r["study"] for r in rows} == {STUDY}
    assert sum(int(r["trials"]) for r in rows) == 9


def test_two_workers_sampling_the_same_candidate_measure_it_once(tmp_path, tiny_gpt2):
    # Two workers (threads here, each with its own storage handle, as two processes would
    # have) pick up the same queued candidate at the same moment, on separate devices.
    path = tmp_path / "twins.journal"
    base = Candidate("dynamic", "sdpa", "float32", 1)
    space = transformers_space(
        cache_implementation=["dynamic", "static"],
        attn_implementation=["sdpa"],
        dtype=["float32"],
        batch_size=[1, 2],
        baseline=base,
    )
    twin = {**base.params(), "cache_implementation": "static", "batch_size": 2}
    seed_study = open_study(_journal(path), "twins", optuna.samplers.RandomSampler(seed=0), {})
    seed_study.enqueue_trial(twin)
    seed_study.enqueue_trial(twin, skip_if_exists=False)
    scale = ScaleConfig(shared_device="flag")  # no device turns: they really run at once
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            study = optuna.load_study(study_name="twins", storage=_journal(path))
            loader = ModelLoader(tiny_gpt2, WeightsSource("random", "test"), torch.device("cpu"), seed=0)
            inner = Objective(
                space,
                transformers_engine(tiny_gpt2),
                Workload(16, 8),
                loader=TransformersLoader(loader),
                warmup=1,
                repetitions=40,
                seed=0,
            )
            me = worker_identity(index, torch.device("cpu"))
            wrapped = WorkerObjective(inner, space, me, scale, None, Requeue(1), wait_timeout_s=120)
            start.wait()
            study.optimize(wrapped, n_trials=1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    trials = optuna.load_study(study_name="twins", storage=_journal(path)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params == trials[1].params and trials[0].params.items() >= twin.items()
    # Whichever decided first measured; the other waited for it and reused its result.
    (measured,) = [t for t in trials if t.user_attrs["dedup"] == "measure"]
    (waited,) = [t for t in trials if t.user_attrs["dedup"] == "wait"]
    assert "reused_from" not in measured.user_attrs and "trial_s" in measured.user_attrs
    assert waited.user_attrs["waited_for"] == [measured.number]
    assert waited.user_attrs["reused_from"] == measured.number and waited.values == measured.values
    assert "trial_s" not in waited.user_attrs  # it did not measure


# --- PostgreSQL ------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback; yields a URL with a password in it."""
    bindir = _postgres_bin()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; install them: apt-get install postgresql"
        if os.environ.get("KVOPT_REQUIRE_POSTGRES"):
            pytest.fail(reason + " (KVOPT_REQUIRE_POSTGRES is set, as in .ci/run)")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="kvopt-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user (Debian's postgresql package creates it)")
        os.chown(root, user.pw_uid, user.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()
    subprocess.run(
        [
            *run_as,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "kvopt",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="kvopt", password=PASSWORD, dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE kvopt")
        conn.close()
        yield f"postgresql://kvopt:{PASSWORD}@127.0.0.1:{port}/kvopt"
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _fresh_db(url: str, name: str) -> str:
    """A new empty database on the test server, so tests do not see each other's studies."""
    import psycopg2

    base = url.rsplit("/", 1)[0]
    conn = psycopg2.connect(base + "/postgres")
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{base}/{name}"


@pytest.mark.postgres
@pytest.mark.slow
def test_three_worker_processes_share_a_postgres_study(tmp_path, postgres_url):
    url = _fresh_db(postgres_url, "three_workers")
    # flag: no device turns, so the three really sample and measure at the same time.
    procs = [
        _start(
            f"worker={i}",
            f"storage.url={url}",
            *FAST,
            "study.n_trials=3",
            "scale.shared_device=flag",
            "search_space.dtype=[float32]",
            f"hydra.run.dir=out/w{i}",
            cwd=tmp_path,
        )
        for i in range(3)
    ]
    outputs = []
    for proc in procs:
        code, output = _finish(proc)
        assert code == 0, output
        outputs.append(output)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(StorageConfig("rdb", url)))
    trials = _assert_cooperated(study, asked=9, workers={0, 1, 2})
    # Trials that shared the device are flagged: the later-ending one of each pair at least.
    ends = {t.number: t.user_attrs["device_end"] for t in trials}
    for a, b in _overlapping_pairs(trials):
        later = max((a, b), key=ends.get)
        assert by_number(trials, later).user_attrs.get("noisy") is True
        assert set(by_number(trials, later).user_attrs["shared_device_with"]) & {a, b}
    # The password is never printed, logged or written (Hydra's saved files included).
    assert all(PASSWORD not in out for out in outputs)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD not in path.read_text(errors="ignore"), path
    assert PASSWORD not in repr(study.user_attrs)
    assert "kvopt:***@127.0.0.1" in outputs[0]


def by_number(trials: list[optuna.trial.FrozenTrial], number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in trials if t.number == number)


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_starting_together_on_an_empty_database_queue_the_baseline_once(postgres_url):
    # All of them create Optuna's tables and the study at once (a real race: it once
    # failed with a duplicate-key error), then queue the baseline under the study lock.
    url = _fresh_db(postgres_url, "race")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=race_to_enqueue, args=("postgres", url, barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    trials = optuna.load_study(study_name="race", storage=open_storage(StorageConfig("rdb", url))).get_trials()
    assert len(trials) == 1 and trials[0].user_attrs["baseline"] is True


@pytest.mark.postgres
@pytest.mark.slow
def test_an_unreachable_or_refusing_database_fails_fast_and_masks_the_password(run_cli, postgres_url):
    start = time.monotonic()
    down = run_cli(*FAST, "storage.url=postgresql://kv:hunter2@127.0.0.1:1/kv", timeout=120)
    assert down.returncode == 2 and time.monotonic() - start < 60
    assert "storage.url: cannot open 'postgresql://kv:***@127.0.0.1:1/kv'" in down.stderr
    assert "Connection refused" in down.stderr or "connection to server" in down.stderr
    assert "hunter2" not in down.stdout + down.stderr and "Traceback" not in down.stderr
    wrong = postgres_url.replace(PASSWORD, "not-the-password")
    refused = run_cli(*FAST, f"storage.url={wrong}", timeout=120)
    assert refused.returncode == 2
    assert "password authentication failed" in refused.stderr
    assert "not-the-password" not in refused.stdout + refused.stderr


# --- crashes -------------------------------------------------------------------------


def _wait_for_running_trial(storage_of, proc: subprocess.Popen, timeout: float = 240) -> optuna.trial.FrozenTrial:
    """Poll the study until a trial is being measured after at least one completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, _finish(proc)[1]
        try:
            trials = optuna.load_study(study_name=STUDY, storage=storage_of()).get_trials()
        except KeyError:  # not created yet
            trials = []
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        # Measuring for 0.3 s already: not a reuse, which ends within milliseconds.
        now = datetime.datetime.now()
        running = [
            t
            for t in trials
            if t.state == TrialState.RUNNING
            and "device_start" in t.user_attrs
            and (now - t.datetime_start).total_seconds() > 0.3
        ]
        if done and running:
            return running[0]
        time.sleep(0.05)
    raise AssertionError("no trial was being measured in time")


# Slow enough trials (a second or more each) to be caught in the middle of one.
SLOW = [*FAST, "profile.repetitions=40", "profile.output_lengths=[16]", "search_space.dtype=[float32]"]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_nothing_and_the_trial_is_retried(tmp_path):
    journal = tmp_path / "kill.journal"
    args = ["storage=journal", f"storage.url={journal}", *SLOW]
    proc = _start(*args, "study.n_trials=6", cwd=tmp_path)
    victim = _wait_for_running_trial(lambda: _journal(journal), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = optuna.load_study(study_name=STUDY, storage=_journal(journal)).get_trials()
    assert before[victim.number].state == TrialState.RUNNING  # killed in the middle of it
    completed = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    assert completed

    code, output = _finish(_start(*args, "study.n_trials=2", cwd=tmp_path))
    assert code == 0, output
    assert f"trial #{victim.number} was left running by a worker that stopped" in output
    after = optuna.load_study(study_name=STUDY, storage=_journal(journal)).get_trials()
    assert {t.number: t.values for t in after if t.number in completed} == completed  # intact
    killed = after[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs["reason"].startswith("interrupted: worker 0 (pid")
    retries = [t for t in after if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1  # queued again once
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    assert retries[0].system_attrs["retry_history"] == [victim.number]
    assert len(after) == len(before) + 2  # the retry was one of the 2 trials asked
    assert all(t.state.is_finished() for t in after)


@pytest.mark.slow
def test_a_silent_worker_on_another_host_is_failed_by_the_heartbeat(tmp_path):
    # RDB storages carry Optuna's heartbeat: a trial whose worker (here: "on another host",
    # so no pid check can tell) stops beating for grace_s is failed and retried.
    url = f"sqlite:///{tmp_path / 'hb.db'}"
    args = [f"storage.url={url}", *SLOW, "scale.heartbeat_s=1", "scale.grace_s=2"]
    proc = _start(*args, "study.n_trials=6", cwd=tmp_path)
    victim = _wait_for_running_trial(lambda: url, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    storage = optuna.storages.RDBStorage(url)
    storage.set_trial_user_attr(victim._trial_id, "host", "another-host")
    time.sleep(3)  # past the grace period
    code, output = _finish(_start(*args, "study.n_trials=1", cwd=tmp_path))
    assert code == 0, output
    after = optuna.load_study(study_name=STUDY, storage=url).get_trials()
    assert after[victim.number].state == TrialState.FAIL
    retries = [t for t in after if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_failed_and_still_writes_the_report(tmp_path):
    url = f"sqlite:///{tmp_path / 'int.db'}"
    proc = _start(f"storage.url={url}", *SLOW, "study.n_trials=6", cwd=tmp_path)
    victim = _wait_for_running_trial(lambda: url, proc)
    proc.send_signal(signal.SIGINT)
    code, output = _finish(proc, timeout=120)
    assert code == 130, output
    assert "interrupted" in output
    trials = optuna.load_study(study_name=STUDY, storage=url).get_trials()
    stopped = trials[victim.number]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["reason"] == "interrupted by the user (Ctrl-C)"
    import json

    (results,) = tmp_path.glob("outputs/*/*/results.json")
    payload = json.loads(results.read_text())
    assert payload["stopped_because"] == "interrupted by the user (Ctrl-C)"
    done = [t.number for t in trials if t.state == TrialState.COMPLETE]
    assert done and [r["number"] for r in payload["trials"] if r["state"] == "COMPLETE"] == done
    # A trial the user stopped is not a crash: a re-run does not queue it again.
    code, output = _finish(_start(f"storage.url={url}", *SLOW, "study.n_trials=1", cwd=tmp_path))
    assert code == 0, output
    after = optuna.load_study(study_name=STUDY, storage=url).get_trials()
    assert not [t for t in after if t.user_attrs.get("retry_of") is not None]


# --- devices ---------------------------------------------------------------------------


@pytest.mark.slow
def test_refuse_policy_exits_when_another_worker_holds_the_device(run_cli, tmp_path):
    locks = tmp_path / "locks"
    held = DeviceLock(locks, f"{socket.gethostname()}/cpu", "pid 1 (worker 7, study 'other')")
    assert held.acquire(blocking=False)
    result = run_cli(*FAST, "storage=memory", "scale.shared_device=refuse", f"scale.lock_dir={locks}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is in use by another kvopt process (pid 1 (worker 7, study 'other'))" in result.stderr
    assert "scale.shared_device=wait" in result.stderr and "Traceback" not in result.stderr
    held.release()


# --- sweeps and launchers --------------------------------------------------------------


@pytest.mark.slow
def test_a_two_by_two_sweep_writes_a_summary_with_four_rows(tmp_path):
    proc = _start(
        "-m",
        "model=tiny-gpt2,tiny-llama",
        "profile=ci-micro,chat-agent",
        "study.n_trials=2",
        "confirm.rounds=0",
        "measure.adaptive=false",
        "profile.context_lengths=[16]",
        "profile.output_lengths=[4]",
        "search_space.dtype=[float32]",
        f"storage.url=sqlite:///{tmp_path / 'sweep.db'}",
        cwd=tmp_path,
    )
    code, output = _finish(proc, timeout=400)
    assert code == 0, output
    rows = _summary_rows(tmp_path)
    assert len(rows) == 4
    assert sorted((r["model"], r["profile"]) for r in rows) == [
        ("tiny-gpt2", "chat-agent"),
        ("tiny-gpt2", "ci-micro"),
        ("tiny-llama", "chat-agent"),
        ("tiny-llama", "ci-micro"),
    ]
    for r in rows:
        assert r["recommendation"] and "/" in r["recommendation"]
        assert r["trials"] == "2" and float(r["wall_s"]) > 0
        assert r["ttft_gain_pct"] and r["decode_gain_pct"] and r["mem_gain_pct"]
    assert "sweep summary:" in output


@pytest.mark.slow
def test_the_submitit_local_launcher_runs_workers_on_one_study(tmp_path):
    journal = tmp_path / "submitit.journal"
    proc = _start(
        "-m",
        "hydra/launcher=submitit_local",
        "worker=0,1",
        "storage=journal",
        f"storage.url={journal}",
        *FAST,
        "study.n_trials=2",
        "search_space.dtype=[float32]",
        f"scale.lock_dir={tmp_path / 'locks'}",
        cwd=tmp_path,
    )
    code, output = _finish(proc, timeout=400)
    assert code == 0, output
    study = optuna.load_study(study_name=STUDY, storage=_journal(journal))
    _assert_cooperated(study, asked=4, workers={0, 1})
    assert len(_summary_rows(tmp_path)) == 2


def test_the_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from kvopt.paths import conf_dir

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "worker=3", "device=cuda:${worker}"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert cfg.device == "cuda:3"
