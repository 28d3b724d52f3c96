"""Many workers on one study: device turns, dead workers found, no candidate measured twice.

Workers are processes (on one host or many) that open the same study in the same storage.
Optuna already hands each queued trial to exactly one of them; this module adds what
timing needs on top:

- **Device turns.** Two workers must not time trials on the same host+device at once, or
  each measures the other's noise. A host-local lock per device (``flock``, released by
  the kernel even on SIGKILL) makes them take turns (``scale.shared_device=wait``), makes
  the second one exit (``refuse``), or is skipped and overlapping trials are flagged
  (``flag``). Every trial records ``host``, ``device_key`` and its device interval.
- **Dead workers.** A trial still RUNNING whose worker process is gone is marked FAIL
  (reason ``interrupted: …``, which says nothing about the candidate) and re-queued
  ``scale.max_retry`` times. On the same host the pid tells at once; across hosts the RDB
  heartbeat tells after ``scale.grace_s`` (the journal storage has no heartbeat in
  Optuna 5, so cross-host journal studies rely on the pid check of a worker on that host).
- **Identical candidates.** A worker that samples a candidate another worker is measuring
  right now waits for that trial and reuses its result instead of measuring it again.
"""

from __future__ import annotations

import contextlib
import fcntl  # POSIX advisory locks; imported here, not in release(), which may run at exit
import os
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from kvopt.attrs import (
    BASELINE_ATTR,
    CANDIDATE_ATTR,
    CANDIDATE_SETTINGS_ATTR,
    FAILURE_ATTR,
    NOISY_ATTR,
    REASON_ATTR,
    Failure,
)
from kvopt.config import ScaleConfig
from kvopt.errors import DeviceError
from kvopt.space import SearchSpace

__all__ = [
    "WorkerIdentity",
    "DeviceLock",
    "device_turn",
    "device_key",
    "worker_identity",
    "worker_alive",
    "open_device_lock",
    "recover_dead_trials",
    "Requeue",
    "WorkerObjective",
    "KEPT_ON_RETRY",
]

# User attrs a re-queued trial keeps from the one that died; the rest described that run.
KEPT_ON_RETRY = (CANDIDATE_ATTR, CANDIDATE_SETTINGS_ATTR, BASELINE_ATTR)
_POLL_S = 0.2


@dataclass(frozen=True)
class WorkerIdentity:
    """Who runs a trial, enough for another worker on the same host to tell if it died."""

    worker: int
    host: str
    boot_id: str
    pid_ns: str
    pid: int
    pid_started: float
    device_key: str

    def attrs(self) -> dict[str, Any]:
        """What every trial of this worker stores: host, device key and the worker's process."""
        return {
            "host": self.host,
            "device_key": self.device_key,
            "worker": {
                "index": self.worker,
                "pid": self.pid,
                "pid_started": self.pid_started,
                "boot_id": self.boot_id,
                "pid_ns": self.pid_ns,
            },
        }


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot@{psutil.boot_time():.0f}"


def _pid_namespace() -> str:
    # Containers on one host share its boot id but not its pids.
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "-"


def device_key(device: torch.device) -> str:
    """The physical device: a GPU by UUID (CUDA_VISIBLE_DEVICES renumbers indices)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return f"cuda-{uuid}" if uuid is not None else f"cuda{index}"
    return device.type  # cpu, mps: one per host


def worker_identity(worker: int, device: torch.device) -> WorkerIdentity:
    """This process as worker ``worker`` on ``device``."""
    host = socket.gethostname()
    return WorkerIdentity(
        worker=worker,
        host=host,
        boot_id=_boot_id(),
        pid_ns=_pid_namespace(),
        pid=os.getpid(),
        pid_started=psutil.Process().create_time(),
        device_key=f"{host}/{device_key(device)}",
    )


def worker_alive(attrs: dict[str, Any], me: WorkerIdentity) -> bool | None:
    """Whether the worker that wrote a trial's attrs still runs; None if this host cannot tell."""
    info = attrs.get("worker")
    if attrs.get("host") != me.host or not isinstance(info, dict):
        return None
    if info.get("boot_id") != me.boot_id:
        return False  # the host rebooted since: every process of that boot is gone
    if info.get("pid_ns") != me.pid_ns:
        return None  # another container on this host: its pids are not ours to see
    try:
        proc = psutil.Process(int(info["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A reused pid belongs to a process started later.
        return abs(proc.create_time() - float(info["pid_started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.Error:
        return None


class DeviceLock:
    """A host-local exclusive lock on one device; the kernel drops it if the holder dies."""

    def __init__(self, lock_dir: Path, key: str, holder: str) -> None:
        self._fd = -1
        if not lock_dir.is_dir():
            lock_dir.mkdir(parents=True, exist_ok=True)
            # Shared like /tmp: every user's workers on this host take turns on a device.
            with contextlib.suppress(OSError):
                lock_dir.chmod(0o1777)
        self.path = lock_dir / f"kvopt-device-{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.lock"
        self.key = key
        self._holder = holder
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(self._fd, 0o666)
        self._held = False

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting unless ``blocking`` is False); whether it is held now."""
        if self._held:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        self._held = True
        # Who holds it, for the message another worker prints when refused.
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, self._holder.encode(), 0)
        return True

    def release(self) -> None:
        """Let the next worker have the device."""
        if self._held:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # Bound at definition: at interpreter exit __del__ may run after module globals are gone.
    def close(self, _flock: Any = fcntl.flock, _unlock: int = fcntl.LOCK_UN, _close: Any = os.close) -> None:
        """Release and close; the lock file stays for the next worker."""
        if self._fd < 0:
            return  # closed already: the number may belong to another file by now
        try:
            if self._held:
                self._held = False
                _flock(self._fd, _unlock)
            _close(self._fd)
        except OSError:
            pass
        self._fd = -1

    def __del__(self) -> None:
        self.close()

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (for a refusal message)."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    @contextlib.contextmanager
    def turn(self) -> Iterator[float]:
        """Hold the device for a block; yields the seconds spent waiting for it."""
        start = time.perf_counter()
        self.acquire()
        try:
            yield time.perf_counter() - start
        finally:
            self.release()


def device_turn(lock: DeviceLock | None, scale: ScaleConfig) -> contextlib.AbstractContextManager[float]:
    """A block that times the device: held alone under ``shared_device=wait``, else as is.

    Yields the seconds spent waiting (0 when nothing is waited for). With ``refuse`` the
    lock is held for the whole run already; with ``flag`` there is none.
    """
    if lock is not None and scale.shared_device == "wait":
        return lock.turn()
    return contextlib.nullcontext(0.0)


def open_device_lock(cfg: ScaleConfig, me: WorkerIdentity, study: str) -> DeviceLock | None:
    """The device lock the policy asks for; ``refuse`` takes it for the whole run or raises."""
    if cfg.shared_device == "flag":
        return None
    lock_dir = Path(cfg.lock_dir).expanduser() if cfg.lock_dir else Path(tempfile.gettempdir()) / "kvopt-locks"
    holder = f"pid {me.pid} (worker {me.worker}, study {study!r})"
    try:
        lock = DeviceLock(lock_dir, me.device_key, holder)
    except OSError as exc:
        raise DeviceError(f"scale.lock_dir: got {str(lock_dir)!r} but cannot create a lock there: {exc}") from None
    if cfg.shared_device == "refuse" and not lock.acquire(blocking=False):
        raise DeviceError(
            f"device: {me.device_key} is in use by another kvopt process ({lock.holder()}); "
            "two workers timing one device measure each other's noise. Allowed: one worker "
            "per device (e.g. device=cuda:${worker}), scale.shared_device=wait (take turns) "
            "or scale.shared_device=flag (measure anyway, flag overlapping trials)"
        )
    return lock


class Requeue:
    """Queue a failed trial's candidate again, at most ``max_retry`` times in a row.

    Used for RDB heartbeat-stale trials and for trials of dead workers. System attrs match
    Optuna's RetryHeartbeatStaleTrialCallback (``failed_trial``, ``retry_history``); the
    user attrs of that run (reason, worker, measurements) are not carried over.
    """

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > self.max_retry or not trial.params:
            return None
        attrs = {k: v for k, v in trial.user_attrs.items() if k in KEPT_ON_RETRY}
        attrs["retry_of"] = trial.number
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs=attrs,
                system_attrs={"failed_trial": history[0], "retry_history": history},
            )
        )
        return trial.number


def recover_dead_trials(study: optuna.Study, me: WorkerIdentity, requeue: Requeue) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and re-queue each once; return their numbers.

    Only the worker whose FAIL lands re-queues (the storage refuses a second FAIL), so two
    workers finding the same dead trial queue it once.
    """
    storage = study._storage
    recovered = []
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
        optuna.storages.fail_stale_trials(study)  # heartbeat-stale trials (RDB); no-op elsewhere
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_alive(trial.user_attrs, me) is not False:
            continue
        info = trial.user_attrs.get("worker", {})
        reason = (
            f"interrupted: worker {info.get('index')} (pid {info.get('pid')} on {trial.user_attrs.get('host')}) "
            f"stopped during this trial (killed or crashed); found by worker {me.worker}"
        )
        try:
            storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, reason)
            storage.set_trial_user_attr(trial._trial_id, FAILURE_ATTR, Failure.INTERRUPTED)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        requeue(study, storage.get_trial(trial._trial_id))
        recovered.append(trial.number)
    return recovered


class WorkerObjective:
    """Wraps the study's objective with what sharing a study needs.

    Sampling happens here first (Optuna returns the same values when the inner objective
    suggests again), so the device turn covers sampling, the identical-candidate check and
    the measurement.
    """

    def __init__(
        self,
        inner: Callable[[optuna.Trial], tuple[float, float, float]],
        space: SearchSpace,
        me: WorkerIdentity,
        scale: ScaleConfig,
        lock: DeviceLock | None,
        requeue: Requeue,
        wait_timeout_s: float,
    ) -> None:
        self.inner = inner
        self.space = space
        self.me = me
        self.scale = scale
        self.lock = lock
        self.requeue = requeue
        self.wait_timeout_s = wait_timeout_s

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        for key, value in self.me.attrs().items():
            trial.set_user_attr(key, value)
        try:
            with device_turn(self.lock, self.scale) as waited:
                trial.set_user_attr("device_wait_s", waited)
                self.space.suggest(trial)
                self._wait_for_identical(trial)
                start = time.time()
                trial.set_user_attr("device_start", start)
                try:
                    return self.inner(trial)
                finally:
                    trial.set_user_attr("device_end", time.time())
                    if self.scale.shared_device == "flag":
                        self._flag_overlaps(trial, start)
        except KeyboardInterrupt:
            if REASON_ATTR not in trial.user_attrs:
                trial.set_user_attr(REASON_ATTR, "interrupted by the user (Ctrl-C)")
                trial.set_user_attr(FAILURE_ATTR, Failure.INTERRUPTED)
            raise

    def _identical_running(self, trial: optuna.Trial, params: dict[str, Any]) -> list[FrozenTrial]:
        # Only trials inside their device turn (device_wait_s is written on entry): a
        # re-queued trial carries its params while it still waits for the device, and
        # waiting on it from inside our turn on that same device would deadlock.
        return [
            t
            for t in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number != trial.number and t.params == params and "device_wait_s" in t.user_attrs
        ]

    def _wait_for_identical(self, trial: optuna.Trial) -> None:
        """Measure a candidate in one worker only, even when several sample it at once.

        Each worker writes its params, then reads the others': of two, at least one sees
        the other. A trial that sees a lower-numbered twin waits for it. One that sees only
        higher-numbered twins waits until they have decided: it measures unless one of them
        (which, seeing no lower twin, did not see this one) measures — then it waits.
        """
        params = dict(trial.params)  # everything the space sampled, as the twins store it
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            twins = self._identical_running(trial, params)
            lower = [t for t in twins if t.number < trial.number]
            undecided = [t for t in twins if t.number > trial.number and "dedup" not in t.user_attrs]
            if lower or not undecided or time.monotonic() > deadline:
                break
            time.sleep(_POLL_S)
        awaited = lower or [t for t in twins if t.user_attrs.get("dedup") == "measure"]
        if not awaited:
            trial.set_user_attr("dedup", "measure")
            return
        numbers = [t.number for t in awaited]
        trial.set_user_attr("dedup", "wait")
        trial.set_user_attr("waited_for", numbers)
        while time.monotonic() < deadline:
            if not any(t.number in numbers for t in self._identical_running(trial, params)):
                return  # the inner objective now reuses the result (or measures, if it failed)
            recover_dead_trials(trial.study, self.me, self.requeue)
            time.sleep(_POLL_S)

    def _flag_overlaps(self, trial: optuna.Trial, start: float) -> None:
        end = time.time()
        others = []
        for t in trial.study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            if t.number == trial.number or attrs.get("device_key") != self.me.device_key:
                continue
            s, e = attrs.get("device_start"), attrs.get("device_end")
            if s is not None and s < end and (e is None or e > start):
                others.append(t.number)
        if others:
            trial.set_user_attr("shared_device_with", others)
            trial.set_user_attr(NOISY_ATTR, True)
