"""The engine boundary: what kvopt's core needs from an inference engine, and nothing more.

An engine (Transformers' ``generate``, llama.cpp through llama-cpp-python) declares its
knobs as data (:class:`kvopt.space.Knob`, on its :class:`kvopt.space.Candidate` class) and
provides, through :class:`Engine`:

- what runs on this machine, with reasons (the probe), as a :class:`kvopt.space.SearchSpace`;
- loading the user's model (:class:`Loader`), kept loaded between candidates where it can be;
- the measurement primitives the protocol (:mod:`kvopt.protocol`) times, per candidate and
  workload shape (:class:`Session`): a call of ``n`` new tokens (TTFT and decode), the peak
  memory of one call, and a decode window (steps decoded from a cache filled once);
- next-token distributions for the quality guard (:class:`FidelityMeter`);
- a memory prediction (:class:`MemoryPrediction`);
- the settings export (recommended.py, recommended.yaml, the terminal's snippet) and what
  ``kvopt info`` says.

The study, sampler, performance model, pruning, confirmation, reports, dashboard, API,
sweeps and workers use engines only through this module. The core never imports an engine
package: :mod:`kvopt.engines` finds one by name.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from kvopt.config import KvoptConfig, ModelConfig, QualityConfig
from kvopt.measure.fidelity import Reference, compare
from kvopt.measure.memory import MemoryReading
from kvopt.predict import MemoryPrediction
from kvopt.quality import Fidelity
from kvopt.space import Candidate, SearchSpace
from kvopt.workload import WindowPlacement, Workload, WorkloadMix

__all__ = [
    "Engine",
    "Loader",
    "Loaded",
    "Session",
    "CallResult",
    "DecodeWindowRun",
    "FidelityMeter",
    "MemoryPrediction",
    "ScriptContext",
    "WeightsSource",
]


@dataclass(frozen=True)
class WeightsSource:
    """Which weights trials load (``pretrained`` or ``random``) and why, in one line for the plan."""

    kind: str  # "pretrained" | "random"
    reason: str
    local_only: bool = True


class CallResult(Protocol):
    """One timed call: ``metrics(batch)`` gives ``ttft_ms`` and ``decode_tok_s``."""

    new_tokens: int
    cut_by_deadline: bool

    @property
    def kv_bytes(self) -> int: ...

    def metrics(self, batch_size: int) -> dict[str, float]: ...


class DecodeWindowRun(Protocol):
    """A cache filled to the window's start; ``timed()`` decodes its steps from it again each time."""

    where: WindowPlacement
    fill_s: float

    def timed(self) -> list[float]: ...

    def metrics(self, steps_s: list[float]) -> dict[str, float]: ...


class Session(ABC):
    """One candidate on one loaded model and one workload shape: the calls the protocol times.

    Attributes:
        batch_size: sequences per call.
        weights_bytes: the model's weights.
        resident_bytes: what the process holds before a call starts (weights, inputs, kept
            caches): the floor the peak of a call is read above.
    """

    batch_size: int
    weights_bytes: int
    resident_bytes: int
    # Whether reading the peak costs nothing (CUDA's allocator counters): then a timed run may carry it.
    free_peak: bool = False

    @abstractmethod
    def call(self, new_tokens: int, deadline_s: float | None = None) -> CallResult:
        """One greedy call of exactly ``new_tokens`` new tokens (cut at ``deadline_s`` seconds if given)."""

    @abstractmethod
    def call_with_peak(self, new_tokens: int, deadline_s: float | None = None) -> tuple[CallResult, MemoryReading]:
        """One call and the peak memory it reached (the reading says how it was read)."""

    @abstractmethod
    def window(self, where: WindowPlacement) -> DecodeWindowRun:
        """A decode window at ``where``: the cache filled to its start (untimed), ready to time."""

    def attrs(self) -> dict[str, Any]:
        """What the session set up, for the trial's attrs (a shared prefix's cache, …)."""
        return {}

    def close(self) -> None:
        """Free what the session holds beyond the loaded model (a batched context); the default holds nothing."""
        return None


@dataclass
class Loaded:
    """A model loaded for some candidates, and how long loading took."""

    model: Any
    key: tuple[Any, ...]
    weights: str
    load_s: float


class Loader(ABC):
    """Loads the user's model and keeps the last one for the next candidate that can share it."""

    model_cfg: ModelConfig
    source: WeightsSource

    @abstractmethod
    def get(self, candidate: Candidate) -> tuple[Loaded, bool]:
        """The model loaded as ``candidate`` needs it, and whether an already loaded one served."""

    @abstractmethod
    def release(self) -> None:
        """Drop the loaded model and free its memory."""


class FidelityMeter(ABC):
    """Measures candidates' outputs against the baseline's on the same real prompts.

    An engine runs the prompts (:meth:`run`); the baseline's outputs are run once and kept, and
    every candidate is compared with them free-running and teacher-forced
    (:func:`kvopt.measure.fidelity.compare`).

    Attributes:
        baseline: the reference's settings.
        prompt_tokens: the profile's prompt length (stored with the fidelity).
    """

    baseline: Candidate
    prompt_tokens: int
    _reference: Reference | None = None

    @abstractmethod
    def run(self, candidate: Candidate, forced: torch.Tensor | None) -> Reference:
        """Greedy outputs of ``candidate`` on the prompts, or teacher-forced on ``forced`` tokens (batch, new)."""

    def reference(self) -> Reference:
        """The baseline's outputs on the prompts (run at the first call, then kept)."""
        if self._reference is None:
            self._reference = self.run(self.baseline, None)
        return self._reference

    def measure(self, candidate: Candidate) -> Fidelity:
        """The candidate's fidelity (token agreement, KL of next-token distributions), seconds included
        (the reference's too, the first time)."""
        start = time.perf_counter()
        reference = self.reference()
        free = self.run(candidate, None)
        forced = self.run(candidate, reference.tokens)
        fidelity = compare(reference, free, forced)
        return Fidelity(
            **{**fidelity.as_dict(), "prompt_tokens": self.prompt_tokens, "seconds": time.perf_counter() - start}
        )


@dataclass(frozen=True)
class ScriptContext:
    """What ``recommended.py`` is written from: the study's model, machine and one measured candidate."""

    candidate: Candidate
    label: str
    values: dict[str, float]
    model: ModelConfig
    workload: Workload
    weights: str
    device: str
    profile: str
    study: str


class Engine(ABC):
    """An inference engine kvopt can tune: one per run, bound to the run's model and device.

    Args:
        model: the model (resolved by :meth:`resolve`).
        weights: where the weights come from (:meth:`resolve`).
        device: where trials run.
        seed: the seed of random weights and synthetic prompts.
        cfg: the run's whole config (needed by :meth:`search_space`; a direct use may omit it).
    """

    name: ClassVar[str]
    candidate_type: ClassVar[type[Candidate]]
    # recommended.yaml's header line: where its settings go.
    YAML_HINT: ClassVar[str] = ""

    def __init__(
        self,
        model: ModelConfig,
        weights: WeightsSource,
        device: torch.device,
        seed: int = 0,
        cfg: KvoptConfig | None = None,
    ) -> None:
        self.model = model
        self.weights = weights
        self.device = device
        self.seed = seed
        self._cfg = cfg

    @property
    def cfg(self) -> KvoptConfig:
        """The run's config (a direct use that builds a space must give it)."""
        if self._cfg is None:
            raise ValueError(f"the {self.name} engine was made without the run's config")
        return self._cfg

    @classmethod
    @abstractmethod
    def resolve(cls, cfg: KvoptConfig) -> tuple[KvoptConfig, WeightsSource]:
        """The model the user named, checked before any work starts (ConfigError on bad input)."""

    @classmethod
    def check_config(cls, cfg: KvoptConfig) -> None:
        """Engine-specific checks of the config that need the installed libraries (ConfigError)."""
        return None  # most engines check nothing more

    @abstractmethod
    def search_space(self, mix: WorkloadMix) -> SearchSpace:
        """The configured space less what cannot run here (the probe), each drop with its reason."""

    @abstractmethod
    def describe_model(self) -> str:
        """The plan's model line: what is loaded, from where."""

    @abstractmethod
    def loader(self) -> Loader:
        """A loader for this run's model."""

    @abstractmethod
    def model_key(self, candidate: Candidate) -> tuple[Any, ...]:
        """What two candidates must share to run on one loaded model (a loader keeps one loaded)."""

    @abstractmethod
    def session(self, loaded: Loaded, candidate: Candidate, workload: Workload, seed: int) -> Session:
        """The timed calls of ``candidate`` on ``workload`` (the shared prefix set up, if any)."""

    def whole_calls_reason(self, candidate: Candidate) -> str | None:
        """Why this candidate's decode can only be timed on whole calls (None: a window is faithful)."""
        return None

    @abstractmethod
    def fidelity_meter(
        self, loader: Loader, baseline: Candidate, quality: QualityConfig, prompt_tokens: int, new_tokens: int
    ) -> FidelityMeter:
        """A meter of candidates' outputs against ``baseline``'s (the reference run once, kept)."""

    @abstractmethod
    def predict_memory(self, candidate: Candidate, workload: Workload) -> MemoryPrediction:
        """The peak memory one call of ``candidate`` on ``workload`` should reach."""

    def peak_scales_with_model(self, candidate: Candidate) -> bool:
        """Whether the memory model's ratio between two shapes carries the measured peak across them."""
        return True

    def memory_prior(self, workload: Workload) -> Callable[[Candidate], float]:
        """Predicted peak MB per candidate, the performance model's memory prior."""
        return lambda candidate: self.predict_memory(candidate, workload).total_mb

    # The settings export: class methods, so a report read back from storage needs no engine instance.
    @classmethod
    @abstractmethod
    def settings_entry(cls, candidate: Candidate, workload: Workload) -> dict[str, Any]:
        """recommended.yaml's settings of one candidate, as plain data (the engine's own keys)."""

    @classmethod
    @abstractmethod
    def settings_script(cls, context: ScriptContext) -> str:
        """The text of ``recommended.py``: applies the settings without kvopt."""

    @classmethod
    @abstractmethod
    def paste_snippet(cls, model: ModelConfig, candidate: Candidate, workload: Workload) -> str:
        """The lines the terminal shows to paste (the same settings recommended.py carries)."""

    def prefix_reuse_note(self, space: SearchSpace) -> str:
        """How the search treats the profile's shared prefix (the plan's line)."""
        return f"not reused: the {self.name} engine has no prefix reuse in kvopt"

    def protocol_note(self) -> str:
        """The plan's protocol line's tail: which candidates are timed on whole calls."""
        return ""

    def info(self) -> list[tuple[str, str]]:
        """What ``kvopt info`` shows about this engine on this machine: (label, line) pairs."""
        return []

    @abstractmethod
    def capabilities(self) -> tuple[str, list[tuple[str, str | None]]]:
        """``kvopt info``'s table: a title, and each choice with None (runs here) or why it does not."""
