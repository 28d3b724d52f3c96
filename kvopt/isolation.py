"""Running one trial in a fresh spawned process with a hard timeout.

A segfault, a poisoned CUDA context, a leak or a hang then costs one trial, not the
study. The child loads the model, measures the candidate, and sends the measurement
back through a pipe; the parent waits at most ``timeout_s`` and kills it after that.
In the child, the peak RSS of the fresh process over the measured runs is recorded too.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from optuna.trial import TrialState

from kvopt.attrs import Failure
from kvopt.config import MeasureConfig, QualityConfig
from kvopt.engines.base import Engine
from kvopt.env import quiet_libraries
from kvopt.failures import failure_reason
from kvopt.measure.rss import PeakRSS
from kvopt.metrics import MB
from kvopt.protocol import Measurement, measure_candidate
from kvopt.quality import Fidelity
from kvopt.select import Result, can_win_check
from kvopt.space import Candidate
from kvopt.workload import Workload

__all__ = ["TrialJob", "FidelityJob", "IsolatedFailure", "run_isolated", "run_fidelity_isolated"]


@dataclass(frozen=True)
class TrialJob:
    """Everything a fresh process needs to measure one candidate (picklable)."""

    engine: Engine  # the run's engine: its config, device and weights (picklable)
    candidate: Candidate
    workload: Workload
    warmup: int
    repetitions: int
    seed: int
    measure: MeasureConfig
    # The study's front when the trial started: lets the child stop a candidate that cannot win.
    front: tuple[Result, ...] = ()
    # False for the baseline: it is measured however slow its first call (protocol.measure_candidate).
    bounded: bool = True


@dataclass(frozen=True)
class FidelityJob:
    """What a fresh process needs to measure one candidate's fidelity (picklable)."""

    engine: Engine
    candidate: Candidate
    baseline: Candidate
    quality: QualityConfig
    prompt_tokens: int
    new_tokens: int
    seed: int


class IsolatedFailure(Exception):
    """The trial process failed; ``state`` is FAIL or PRUNED, ``reason`` says why, ``kind`` is a Failure."""

    def __init__(self, state: TrialState, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason
        self.kind = kind


def _reply(conn: Connection, work: Callable[[], tuple[Any, float]]) -> None:
    """Run ``work`` in the child and send its result, or its failure, to the parent."""
    try:
        quiet_libraries()
        conn.send(("ok", *work()))
    except BaseException as exc:  # report everything; the parent decides
        failed = failure_reason(exc)
        conn.send(("error", failed.state.name, failed.reason, failed.kind))
    finally:
        conn.close()


def _measure(job: TrialJob) -> tuple[Measurement, float]:
    loaded, _ = job.engine.loader().get(job.candidate)
    with PeakRSS() as peak:
        measurement = measure_candidate(
            job.engine,
            loaded,
            job.candidate,
            job.workload,
            warmup=job.warmup,
            repetitions=job.repetitions,
            seed=job.seed,
            measure=job.measure,
            can_win=can_win_check(list(job.front), job.measure.rel_precision) if job.front else None,
            bounded=job.bounded,
        )
    measurement.extra.update(
        {
            "peak_rss_mb": peak.bytes / MB,
            "rss_after_load_mb": peak.start_bytes / MB,
            "peak_rss_method": peak.method,
        }
    )
    return measurement, loaded.load_s


def _child(job: TrialJob, conn: Connection) -> None:
    _reply(conn, lambda: _measure(job))


def _fidelity_child(job: FidelityJob, conn: Connection) -> None:
    def work() -> tuple[Fidelity, float]:
        loader = job.engine.loader()
        meter = job.engine.fidelity_meter(loader, job.baseline, job.quality, job.prompt_tokens, job.new_tokens)
        return meter.measure(job.candidate), 0.0

    _reply(conn, work)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"trial process killed by {name}"
    return f"trial process exited with status {exitcode} without a result"


def run_isolated(job: TrialJob, timeout_s: float) -> tuple[Measurement, float]:
    """Measure in a fresh process; return (measurement, load seconds) or raise IsolatedFailure."""
    measurement, load_s = _run_child(_child, job, timeout_s)
    return measurement, load_s


def run_fidelity_isolated(job: FidelityJob, timeout_s: float) -> Fidelity:
    """Measure a candidate's fidelity in a fresh process (its own baseline reference); raise IsolatedFailure."""
    fidelity, _ = _run_child(_fidelity_child, job, timeout_s)
    return fidelity


def _run_child(target: Any, job: Any, timeout_s: float) -> tuple[Any, float]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(job, sender), name="kvopt-trial", daemon=True)
    process.start()
    sender.close()  # only the child writes: EOF here means the child is gone
    message: Any = None
    try:
        if receiver.poll(timeout_s):
            try:
                message = receiver.recv()
            except EOFError:
                message = None
        else:
            process.kill()
            process.join()
            raise IsolatedFailure(
                TrialState.FAIL, f"trial exceeded trial.timeout_s={timeout_s:g} s and was killed", Failure.TIMEOUT
            )
    finally:
        receiver.close()
    process.join(timeout=30)
    if process.is_alive():
        process.kill()
        process.join()
    if message is None:
        raise IsolatedFailure(TrialState.FAIL, _death_reason(process.exitcode), Failure.CRASHED)
    if message[0] == "error":
        raise IsolatedFailure(TrialState[message[1]], message[2], message[3])
    return message[1], message[2]
