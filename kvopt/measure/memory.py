"""Memory of a candidate: weights and KV-cache bytes from the tensors, and the peak of a run.

``peak_mem_mb`` (the study's objective) means the same on every device: the most bytes
held by torch tensors at any moment of one ``generate`` call, weights included.

- CUDA: ``torch.cuda.max_memory_allocated`` after a reset of the peak counter. Reserved
  memory (the caching allocator's pool) and NVML's per-process figure are kept beside it.
- CPU (and MPS): the bytes resident before the call (weights, inputs: counted from the
  tensors) plus the highest point of the running sum of every allocation and free that
  torch's profiler records during the call. That counts the KV cache, activations,
  logits and kernel scratch buffers that go through torch's allocator. A process-RSS
  delta does not work here: after warm-up the allocator reuses freed pages and the
  delta is ~0 for most candidates.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

from kvopt.metrics import MB  # the unit of every memory figure; named here for memory code

__all__ = [
    "free_device_memory",
    "MB",
    "MemoryReading",
    "storage_bytes",
    "weights_bytes",
    "cache_bytes",
    "measure_peak",
    "nvml_process_bytes",
    "nvml_uuid",
]

T = TypeVar("T")


@dataclass
class MemoryReading:
    """A peak memory figure, how it was read (``method``) and the parts it was read from."""

    peak_bytes: int
    method: str
    details: dict[str, Any] = field(default_factory=dict)


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind these tensors (views counted once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if storage.data_ptr() == 0 or key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared storages counted once)."""
    return storage_bytes([*model.parameters(), *model.buffers()])


def _tensors_in(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors_in(item)


def cache_bytes(cache: Any) -> int:
    """Bytes held by a Transformers cache object, read from its tensors.

    Works for every cache built from layers (dynamic, static, offloaded, quantized):
    each layer's tensor attributes are counted, whatever the implementation calls them.
    """
    if cache is None:
        return 0
    layers = getattr(cache, "layers", None)
    if layers is None:  # legacy tuple-of-tuples format
        return storage_bytes(_tensors_in(cache))
    tensors: list[torch.Tensor] = []
    for layer in layers:
        for value in vars(layer).values():
            tensors.extend(_tensors_in(value))
    return storage_bytes(tensors)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C++ prints bypass sys.stderr) for a short block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _profiled_peak_extra(fn: Callable[[], T], device_type: str) -> tuple[T, int, int]:
    """Run fn under torch's profiler; return (result, peak extra bytes, allocation events).

    The profiler reports each allocation and free with its size; their running sum is
    the bytes allocated since the start, and its maximum is the peak above the start.
    """
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints start/stop lines to fd 2 unconditionally
        prof.__enter__()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            prof.__exit__(None, None, None)
    events: list[tuple[int, int]] = []

    def walk(node: Any) -> None:
        fields = node.extra_fields
        if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == device_type:
            events.append((node.start_time_ns, int(fields.alloc_size)))
        for child in node.children:
            walk(child)

    # Entered and exited above, the profiler always holds its results here.
    assert prof.profiler is not None and prof.profiler.kineto_results is not None
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    events.sort()
    running = peak = 0
    for _, size in events:
        running += size
        peak = max(peak, running)
    return result, peak, len(events)


def nvml_uuid(torch_uuid: str) -> str:
    """NVML's name for the device torch calls ``torch_uuid``.

    torch reports the bare UUID; NVML wants it prefixed ("GPU-…", or "MIG-…" for a MIG
    slice). Matching by UUID, not index, keeps CUDA_VISIBLE_DEVICES reordering correct.
    """
    return torch_uuid if torch_uuid.startswith(("GPU-", "MIG-")) else f"GPU-{torch_uuid}"


def nvml_process_bytes(device: torch.device) -> dict[str, int] | None:
    """NVML's view of the GPU behind ``device``: this process's bytes and the device's used bytes.

    The device is found by UUID, so CUDA_VISIBLE_DEVICES reordering maps correctly.
    Returns None where NVML is unavailable.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(nvml_uuid(str(torch.cuda.get_device_properties(device).uuid)))
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        mine = None
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                mine = int(proc.usedGpuMemory)
        # Inside a PID namespace the process may not be listed: keep the device figure.
        result = {"device_used_bytes": used}
        if mine is not None:
            result["process_bytes"] = mine
        return result
    except Exception:  # NVML missing, no permission, or an unknown device: optional figure
        return None


def measure_peak(fn: Callable[[], T], device: torch.device, resident_bytes: int) -> tuple[T, MemoryReading]:
    """Run fn once and read its peak memory (see the module docstring for the definition)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        details: dict[str, Any] = {
            "torch_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "torch_peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
        }
        nvml = nvml_process_bytes(device)
        if nvml is not None:
            details.update({f"nvml_{k}": v for k, v in nvml.items()})
        return result, MemoryReading(
            peak_bytes=int(details["torch_peak_allocated_bytes"]),
            method="torch.cuda.max_memory_allocated",
            details=details,
        )
    result, extra, n_events = _profiled_peak_extra(fn, device.type)
    return result, MemoryReading(
        peak_bytes=resident_bytes + extra,
        method="resident tensor bytes + profiler allocation peak",
        details={
            "resident_bytes": resident_bytes,
            "peak_extra_bytes": extra,
            "allocation_events": n_events,
        },
    )


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and return the device's cached blocks, so the next trial starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
