"""What this machine is: the resolved device, hardware facts and library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import psutil
import torch

from kvopt.errors import DeviceError

__all__ = [
    "resolve_device",
    "device_label",
    "machine_info",
    "library_versions",
    "kvopt_version",
    "memory_budget_bytes",
]

_LIBRARIES = ("torch", "transformers", "accelerate", "optuna", "optuna-dashboard", "hydra-core")


def kvopt_version() -> str:
    """The installed kvopt's version (``unknown (not installed)`` when it is not installed)."""
    try:
        return importlib.metadata.version("kvopt")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto | cpu | cuda | cuda:N | mps`` into a device that exists here."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device: got {spec!r} but CUDA is not available on this machine; allowed here: auto, cpu"
            )
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(
                f"device: got {spec!r} but this machine has {count} CUDA device(s); allowed: cuda:0 … cuda:{count - 1}"
            )
        return torch.device("cuda", index)
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device: got 'mps' but MPS is not available here; allowed here: auto, cpu")
        return torch.device("mps")
    raise DeviceError(f"device: got {spec!r}; allowed: auto, cpu, cuda, cuda:N, mps")


def device_label(device: torch.device) -> str:
    """Short name for study names: ``cpu``, ``cuda0``, ``mps``."""
    if device.type == "cuda":
        return f"cuda{device.index or 0}"
    return device.type


def memory_budget_bytes(budget_mb: float | None, device: torch.device) -> int | None:
    """The configured budget, or what the device has free now (CUDA: free device memory;
    CPU: available system memory). None where the device cannot tell (MPS)."""
    if budget_mb is not None:
        return int(budget_mb * 2**20)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return int(psutil.virtual_memory().available)
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Python's and every measured library's version: what a reader needs to compare runs."""
    versions = {"python": platform.python_version(), "kvopt": kvopt_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """Facts a reader needs to judge a measurement: CPU, memory, GPU, threads, versions."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_name(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": [],
        "versions": library_versions(),
    }
    if torch.cuda.is_available():
        info["cuda_runtime"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append(
                {
                    "index": i,
                    "name": props.name,
                    "memory_gb": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if device is not None:
        info["device"] = str(device)
    return info
