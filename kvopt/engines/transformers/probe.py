"""What this machine and model can run, found before the study starts.

Each choice is checked on its own, the others held at the baseline: first by rules that
need no model (offloaded caches need CUDA, flash attention needs its package), then by a
two-token ``generate`` on a one-layer model of the same architecture, and for dtypes by
timing a matmul of the model's width against the baseline dtype. A choice that fails is
dropped from the search space with one line saying why.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from kvopt.config import ModelConfig
from kvopt.engines.transformers.candidate import PARAM_NAMES, Candidate
from kvopt.engines.transformers.generation import timed_generate
from kvopt.engines.transformers.loading import build_config
from kvopt.measure.timing import synchronize

__all__ = [
    "ProbeResult",
    "probe",
    "default_attn_implementation",
    "rule_out",
    "backend_missing",
    "dtype_slowdown",
]

_PROBE_VOCAB = 1024


@dataclass
class ProbeResult:
    """What the probe found: each tried choice that ran, and each that cannot, with why."""

    # "param=value" -> one-line reason it cannot run here.
    unavailable: dict[str, str] = field(default_factory=dict)
    # "param=value" that ran.
    available: list[str] = field(default_factory=list)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


BACKEND_MODULES = {"quanto": "optimum.quanto", "hqq": "hqq"}  # fp8 is built into transformers


def backend_missing(backend: str) -> str | None:
    """Why a quantized-cache backend cannot run here (its package is absent), else None."""
    module = BACKEND_MODULES.get(backend)
    if module is not None and not _has_module(module):
        return f"the quantized cache's {backend} backend needs the {module} package, which is not installed"
    return None


def rule_out(param: str, value: Any, device: torch.device) -> str | None:
    """A reason this choice cannot run here that needs no model to find, else None."""
    if param == "quantized_backend":
        return backend_missing(value)
    if param == "cache_implementation":
        if value.startswith("offloaded") and device.type != "cuda":
            return "offloaded caches move layers between GPU and CPU: they need a CUDA device"
    if param == "attn_implementation":
        if value.startswith("flash_attention"):
            package = "flash_attn" if value == "flash_attention_2" else "flash_attn_interface"
            if device.type != "cuda":
                return f"{value} runs on CUDA devices only"
            if not _has_module(package):
                return f"{value} needs the {package} package, which is not installed"
    if param == "dtype" and value == "bfloat16" and device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
    return None


def _hidden_size(model_cfg: ModelConfig) -> int:
    arch = model_cfg.architecture
    for key in ("hidden_size", "n_embd", "d_model"):
        if isinstance(arch.get(key), int):
            return int(arch[key])
    return 1024


def _matmul(dtype: str, size: int, device: torch.device) -> Callable[[], float]:
    """A timer of one (64 x size) @ (size x 4*size) matmul (an MLP projection's shape), in seconds."""
    a = torch.randn(64, size, device=device).to(getattr(torch, dtype))
    b = torch.randn(size, 4 * size, device=device).to(getattr(torch, dtype))

    def once() -> float:
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - start

    return once


def dtype_slowdown(model_cfg: ModelConfig, dtype: str, reference: str, device: torch.device, pairs: int = 7) -> float:
    """How many times slower this dtype's matmuls run than the reference dtype's, here.

    CPUs without native bfloat16/float16 kernels (no AVX512-BF16 or AMX) emulate them,
    measured here at over 100x slower than float32: such a dtype cannot win a trial.
    Measured in interleaved pairs (reference, dtype; then dtype, reference: ABBA, so drift
    cancels) and summarised by the median of the per-pair ratios: a busy neighbour slows
    both halves of a pair alike, so the decision is the same on a loaded machine.
    """
    size = _hidden_size(model_cfg)
    ref, other = _matmul(reference, size, device), _matmul(dtype, size, device)
    ref(), other()  # warm-up: first calls allocate and pick kernels
    ratios = []
    for i in range(pairs):
        if i % 2 == 0:
            r = ref()
            o = other()
        else:
            o = other()
            r = ref()
        ratios.append(o / max(r, 1e-9))
    return statistics.median(ratios)


def _tiny_model(model_cfg: ModelConfig, dtype: str, attn: str | None, device: torch.device) -> Any:
    vocab = min(int(model_cfg.architecture.get("vocab_size", _PROBE_VOCAB)), _PROBE_VOCAB)
    config = build_config(model_cfg, num_hidden_layers=1, vocab_size=vocab)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, **kwargs)


def default_attn_implementation(model_cfg: ModelConfig, device: torch.device) -> str:
    """The attention backend Transformers picks for this model when the user names none."""
    model = _tiny_model(model_cfg, model_cfg.dtype, None, device)
    return str(model.config._attn_implementation)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    # Keep the first sentence: library messages often go on with links and advice.
    end = message.find(". ")
    if 0 < end < 200:
        message = message[: end + 1]
    return f"{type(exc).__name__}: {message}"[:240]


@torch.inference_mode()
def _try(model_cfg: ModelConfig, candidate: Candidate, device: torch.device) -> str | None:
    try:
        model = _tiny_model(model_cfg, candidate.dtype, candidate.attn_implementation, device)
        ids = torch.randint(1, model.config.vocab_size, (1, 8), device=device)
        # The same call a trial makes, so every cache (paged too) is probed as it is measured.
        timed_generate(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, candidate, 2, device)
        return None
    except Exception as exc:  # any failure means: this choice does not run here
        return _first_line(exc)


def probe(
    model_cfg: ModelConfig,
    device: torch.device,
    choices: dict[str, list[Any]],
    baseline: Candidate,
    quantized_backends: tuple[str, ...] = ("fp8",),
    max_dtype_slowdown: float | None = None,
) -> ProbeResult:
    """Check every choice (others at the baseline) and say which cannot run, and why.

    With ``max_dtype_slowdown``, a dtype whose matmuls run that many times slower than the
    baseline's dtype here is dropped too: it runs, but cannot win, and would eat the budget.
    """
    result = ProbeResult()
    wants_quantized = "quantized" in choices.get("cache_implementation", [])
    items = [(p, v) for p in PARAM_NAMES if p != "batch_size" for v in choices.get(p, [])]
    # batch size limits are memory limits: found per trial. Quantized backends: each on its own.
    items += [("quantized_backend", b) for b in (quantized_backends if wants_quantized else ())]
    for param, value in items:
        if param == "cache_implementation" and value == "quantized":
            continue  # decided by its backends below
        key = f"{param}={value}"
        reason = rule_out(param, value, device)
        if reason is None:
            if param == "quantized_backend":
                nbits = 4 if value == "quanto" or value == "hqq" else None
                candidate = replace(
                    baseline, cache_implementation="quantized", quantized_backend=value, quantized_nbits=nbits
                )
            else:
                candidate = replace(baseline, **{param: value})
            reason = _try(model_cfg, candidate, device)
        if reason is None and param == "dtype" and value != baseline.dtype and max_dtype_slowdown:
            slowdown = dtype_slowdown(model_cfg, value, baseline.dtype, device)
            if slowdown > max_dtype_slowdown:
                reason = (
                    f"its matmuls run {slowdown:.0f}x slower than {baseline.dtype} on this "
                    f"{device.type} (no native kernels; limit "
                    f"search_space.max_dtype_slowdown={max_dtype_slowdown:g})"
                )
        if reason is None:
            result.available.append(key)
        else:
            result.unavailable[key] = reason
    if wants_quantized and not any(k.startswith("quantized_backend=") for k in result.available):
        result.unavailable["cache_implementation=quantized"] = "none of its backends runs here"
    return result
