"""How a trial gets its measurement: the measurers a trial can be given.

A trial decides *whether* to measure a candidate (reuse, repeat failures, memory and
time checks); a measurer decides *how*: in this process with the model kept loaded
(:class:`InlineMeasurer`), in a fresh process with a hard timeout (:class:`ProcessMeasurer`),
or from a recorded table (the benchmark harness's replay, scripts/kvopt_bench/replay.py). The config's
``trial.isolation`` chooses between the first two (:func:`make_measurer`); a new way to
measure is one new subclass of :class:`Measurer`, nothing in the trial changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from kvopt.config import MeasureConfig, QualityConfig, TrialConfig
from kvopt.engines.base import Engine, FidelityMeter, Loader
from kvopt.errors import KvoptError
from kvopt.isolation import FidelityJob, TrialJob, run_fidelity_isolated, run_isolated
from kvopt.protocol import Measurement, measure_candidate
from kvopt.quality import Fidelity
from kvopt.select import Result, can_win_check
from kvopt.space import Candidate
from kvopt.workload import Workload

__all__ = ["Measured", "Measurer", "ProtocolSettings", "InlineMeasurer", "ProcessMeasurer", "make_measurer"]


@dataclass(frozen=True)
class Measured:
    """What a measurer returns for one candidate.

    Attributes:
        measurement: the timed runs and memory of the candidate.
        load_s: seconds spent loading the model for it (0 when a loaded model was reused).
        model_reused: whether an already loaded model served this candidate.
    """

    measurement: Measurement
    load_s: float
    model_reused: bool


class Measurer(ABC):
    """Measures one candidate for a trial; subclasses say where and how.

    Attributes:
        name: stored with each trial as its ``isolation`` attribute (inline, process, replay).
    """

    name: str = "inline"

    @abstractmethod
    def measure(self, candidate: Candidate, front: list[Result], *, bounded: bool = True) -> Measured:
        """Measure ``candidate``; ``front`` (possibly empty) lets it stop one that cannot win.

        ``bounded``: a candidate whose first call is far past the trial budget is refused
        (:func:`kvopt.protocol.measure_candidate`); the baseline is measured unbounded.

        Raises:
            Exception: any failure of the candidate; the trial records it and the study goes on.
        """

    def fidelity(self, candidate: Candidate, baseline: Candidate) -> Fidelity:
        """The candidate's outputs against the baseline's on real prompts (:mod:`kvopt.engines.transformers.fidelity`).

        Runs before the timed runs, only for a candidate the quality guard must check.

        Raises:
            Exception: any failure of the candidate; the trial records it and the study goes on.
        """
        raise KvoptError(f"the {self.name} measurer cannot measure fidelity")


@dataclass(frozen=True)
class ProtocolSettings:
    """What the measurement protocol needs besides the candidate: engine, model, lengths, repetitions."""

    engine: Engine
    loader: Loader
    workload: Workload
    warmup: int
    repetitions: int
    seed: int
    measure: MeasureConfig
    quality: QualityConfig = field(default_factory=QualityConfig)


class InlineMeasurer(Measurer):
    """Measures in this process; the loader keeps a model loaded for the next candidate.

    The baseline's fidelity reference is run once, at the first candidate that needs it, and kept.
    """

    name = "inline"

    def __init__(self, settings: ProtocolSettings) -> None:
        self.settings = settings
        self._meter: FidelityMeter | None = None

    def fidelity(self, candidate: Candidate, baseline: Candidate) -> Fidelity:
        s = self.settings
        if self._meter is None or self._meter.baseline != baseline:
            self._meter = s.engine.fidelity_meter(
                s.loader, baseline, s.quality, s.workload.prompt_tokens, s.workload.new_tokens
            )
        return self._meter.measure(candidate)

    def measure(self, candidate: Candidate, front: list[Result], *, bounded: bool = True) -> Measured:
        s = self.settings
        loaded, reused = s.loader.get(candidate)
        measurement = measure_candidate(
            s.engine,
            loaded,
            candidate,
            s.workload,
            warmup=s.warmup,
            repetitions=s.repetitions,
            seed=s.seed,
            measure=s.measure,
            can_win=can_win_check(front, s.measure.rel_precision) if front else None,
            bounded=bounded,
        )
        return Measured(measurement, 0.0 if reused else loaded.load_s, reused)


class ProcessMeasurer(Measurer):
    """Measures in a fresh spawned process, killed after ``timeout_s`` (:mod:`kvopt.isolation`)."""

    name = "process"

    def __init__(self, settings: ProtocolSettings, timeout_s: float) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    def measure(self, candidate: Candidate, front: list[Result], *, bounded: bool = True) -> Measured:
        s = self.settings
        job = TrialJob(
            engine=s.engine,
            candidate=candidate,
            workload=s.workload,
            warmup=s.warmup,
            repetitions=s.repetitions,
            seed=s.seed,
            measure=s.measure,
            front=tuple(front),
            bounded=bounded,
        )
        measurement, load_s = run_isolated(job, self.timeout_s)
        return Measured(measurement, load_s, False)

    def fidelity(self, candidate: Candidate, baseline: Candidate) -> Fidelity:
        # A process of its own (it runs the baseline's reference too): a crash costs the trial only.
        s = self.settings
        job = FidelityJob(
            engine=s.engine,
            candidate=candidate,
            baseline=baseline,
            quality=s.quality,
            prompt_tokens=s.workload.prompt_tokens,
            new_tokens=s.workload.new_tokens,
            seed=s.seed,
        )
        return run_fidelity_isolated(job, self.timeout_s)


def make_measurer(
    trial: TrialConfig,
    engine: Engine,
    loader: Loader,
    workload: Workload,
    *,
    warmup: int,
    repetitions: int,
    seed: int,
    measure: MeasureConfig,
    quality: QualityConfig | None = None,
) -> Measurer:
    """The measurer ``trial.isolation`` names (inline or process)."""
    settings = ProtocolSettings(
        engine, loader, workload, warmup, repetitions, seed, measure, quality or QualityConfig()
    )
    if trial.isolation == "process":
        return ProcessMeasurer(settings, trial.timeout_s)
    return InlineMeasurer(settings)
