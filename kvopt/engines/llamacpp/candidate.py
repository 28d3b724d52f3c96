"""The llama.cpp engine's candidate: its knobs, as llama-server and llama-cli users set them by hand.

The knob table (:data:`Candidate.KNOBS`) holds every value the engine knows; the run's
``engine.knobs`` narrows them, and what this build or model cannot run is dropped with its
reason before the study (:mod:`kvopt.engines.llamacpp.engine`). A quantized V cache needs
flash attention, so ``type_v`` is a knob only under ``flash_attn=true`` (without it the V
cache is f16).
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass
from typing import Any, ClassVar

from kvopt.engines.llamacpp.build import KV_CACHE_TYPES
from kvopt.space import Candidate as BaseCandidate
from kvopt.space import Knob

__all__ = ["Candidate", "EXACT_CACHE_TYPES", "HIGHER_CACHE_TYPES", "binding_defaults", "thread_counts"]

# The baseline's cache type (llama.cpp's default) and the one that holds more than it does.
EXACT_CACHE_TYPES = ("f16",)
HIGHER_CACHE_TYPES = ("f32",)
# Cache types that store fewer bits than f16: lossy, checked by the quality guard.
_LOSSY_TYPES = frozenset(t for t in KV_CACHE_TYPES if t not in EXACT_CACHE_TYPES + HIGHER_CACHE_TYPES)


def binding_defaults() -> dict[str, Any]:
    """What ``llama_cpp.Llama`` uses when the user sets nothing (0.3.36's defaults; threads by the cores)."""
    cores = multiprocessing.cpu_count()
    return {
        "type_k": "f16",
        "type_v": "f16",
        "flash_attn": False,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": max(cores // 2, 1),
        "n_threads_batch": cores,
        "batch_size": 1,
    }


def thread_counts(cores: int) -> tuple[int, ...]:
    """``auto`` threads: 1, 2, 4, … below the cores, and the cores themselves."""
    powers = [2**i for i in range(int(math.log2(cores)) + 1) if 2**i < cores]
    return (*powers, cores)


@dataclass(frozen=True)
class Candidate(BaseCandidate):
    """One llama.cpp setting of the KV cache, attention, batches and threads (``llama_cpp.Llama`` names)."""

    ENGINE: ClassVar[str] = "llamacpp"
    KNOBS: ClassVar[tuple[Knob, ...]] = ()  # set below

    type_k: str
    type_v: str
    flash_attn: bool
    n_batch: int
    n_ubatch: int
    n_threads: int
    n_threads_batch: int
    batch_size: int = 1
    # GPU builds only: layers offloaded, and whether the KV cache goes with them.
    n_gpu_layers: int | None = None
    offload_kqv: bool | None = None

    @property
    def label(self) -> str:
        """``q8_0/q8_0+fa/b512.512/t2.2/s1``: cache K/V, flash attention, batches, threads, sequences."""
        fa = "+fa" if self.flash_attn else ""
        gpu = f"/ngl{self.n_gpu_layers}" + ("" if self.offload_kqv in (None, True) else "-nkvo")
        gpu = gpu if self.n_gpu_layers is not None else ""
        return (
            f"{self.type_k}/{self.type_v}{fa}/b{self.n_batch}.{self.n_ubatch}"
            f"/t{self.n_threads}.{self.n_threads_batch}{gpu}/s{self.batch_size}"
        )

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type_k": self.type_k, "flash_attn": self.flash_attn}
        if self.flash_attn:
            out["type_v"] = self.type_v
        out.update(
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            batch_size=self.batch_size,
        )
        if self.n_gpu_layers is not None:
            out["n_gpu_layers"] = self.n_gpu_layers
            if self.n_gpu_layers > 0:  # where no layer is offloaded there is no KV to offload
                out["offload_kqv"] = self.offload_kqv
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Candidate:
        flash = bool(params["flash_attn"])
        return cls(
            type_k=str(params["type_k"]),
            type_v=str(params.get("type_v", "f16")) if flash else "f16",
            flash_attn=flash,
            n_batch=int(params["n_batch"]),
            n_ubatch=int(params["n_ubatch"]),
            n_threads=int(params["n_threads"]),
            n_threads_batch=int(params["n_threads_batch"]),
            batch_size=int(params.get("batch_size", 1)),
            n_gpu_layers=None if params.get("n_gpu_layers") is None else int(params["n_gpu_layers"]),
            offload_kqv=None if params.get("offload_kqv") is None else bool(params["offload_kqv"]),
        )

    def settings(self) -> dict[str, Any]:
        """``llama_cpp.Llama`` keyword arguments (cache types by name; the session maps them to enums)."""
        out: dict[str, Any] = {
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn": self.flash_attn,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
        }
        if self.n_gpu_layers is not None:
            out["n_gpu_layers"] = self.n_gpu_layers
            out["offload_kqv"] = self.offload_kqv
        return out

    # The performance model's factors, ordinals and "one setting" groups are the knob table's
    # (kvopt.space.Candidate): type_k; flash_attn with type_v under it; each batch and thread
    # count an ordinal of its own. A search step can then change the K type, or turn flash
    # attention on with a V type, apart (measured on the recorded tiny-GGUF grid: grouping the
    # three into one "cache" setting made the first steps try every cache variant first).

    def fidelity_params(self) -> dict[str, Any]:
        """The cache types and flash attention: batches, threads and sequences change no output's
        distribution beyond the order of sums (the quality guard measures each cache setting once)."""
        return {"type_k": self.type_k, "type_v": self.type_v, "flash_attn": self.flash_attn}

    def classify(self, baseline: BaseCandidate) -> tuple[str, str]:
        """A cache type below f16 loses precision; f32 holds more than the f16 baseline (checked)."""
        lossy = [f"{role} cache {t}" for role, t in (("K", self.type_k), ("V", self.type_v)) if t in _LOSSY_TYPES]
        if lossy:
            return "lossy", "quantized KV cache (" + ", ".join(lossy) + ")"
        if self.type_k in HIGHER_CACHE_TYPES or self.type_v in HIGHER_CACHE_TYPES:
            return "checked", "an f32 KV cache instead of f16: another numeric path"
        return "exact", (
            "exact by construction: f16 KV cache; batches, threads and flash attention change the order of sums only"
        )


_FA = ("flash_attn", (True,))
Candidate.KNOBS = (
    Knob("type_k", KV_CACHE_TYPES, baseline="f16", lossy=_LOSSY_TYPES),
    Knob("flash_attn", (False, True), kind="boolean", baseline=False),
    # A quantized V cache needs flash attention: without it V stays f16 (not a choice).
    Knob("type_v", KV_CACHE_TYPES, when=_FA, lossy=_LOSSY_TYPES),
    Knob("n_batch", (32, 64, 128, 256, 512, 1024, 2048, 4096), kind="ordinal", baseline=512),
    Knob("n_ubatch", (32, 64, 128, 256, 512, 1024, 2048, 4096), kind="ordinal", baseline=512),
    Knob("n_threads", tuple(range(1, 257)), kind="ordinal"),
    Knob("n_threads_batch", tuple(range(1, 257)), kind="ordinal"),
    Knob("batch_size", (1, 2, 4, 8, 16, 32), kind="ordinal", baseline=1),
    Knob("n_gpu_layers", tuple(range(0, 1000)), kind="ordinal"),
    Knob("offload_kqv", (False, True), kind="boolean", when=("n_gpu_layers", tuple(range(1, 1000)))),
)
