"""Loading a model: pretrained weights when they can be had, random weights otherwise.

Random weights are valid for timing because kvopt always generates a fixed number of
tokens (``min_new_tokens == max_new_tokens``): the work done does not depend on values.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from kvopt.config import ModelConfig
from kvopt.errors import KvoptError

__all__ = [
    "WeightsSource",
    "LoadedModel",
    "ModelLoader",
    "resolve_weights",
    "build_config",
    "free_device_memory",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSource:
    """Which weights trials load (``pretrained`` or ``random``) and why, in one line for the plan."""

    kind: str  # "pretrained" | "random"
    reason: str
    local_only: bool = True


@dataclass
class LoadedModel:
    """A model loaded with one dtype and attention backend, and how long loading took."""

    model: PreTrainedModel
    dtype: str
    attn_implementation: str
    weights: str
    load_s: float


def build_config(model_cfg: ModelConfig, **overrides: Any) -> PretrainedConfig:
    """A fresh Transformers config from the architecture carried in the model config.

    Fresh each time: ``from_config(cfg, attn_implementation=…)`` mutates ``cfg``.
    """
    fields = {**model_cfg.architecture, **overrides}
    model_type = fields.pop("model_type")
    return AutoConfig.for_model(model_type, **fields)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the hub, so an offline machine costs seconds, not retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    result: list[bool] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    # Name resolution ignores socket timeouts; a daemon thread bounds it.
    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout_s + 0.5)
    return bool(result and result[0])


def _cached_locally(model_cfg: ModelConfig) -> bool:
    if (Path(model_cfg.hub_id) / "config.json").is_file():
        return True
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_cfg.hub_id, "config.json", revision=model_cfg.revision)
    return isinstance(found, str)


def resolve_weights(model_cfg: ModelConfig) -> WeightsSource:
    """Decide once, before the study, where the weights come from."""
    if model_cfg.weights == "random":
        return WeightsSource("random", "model.weights=random")
    if _cached_locally(model_cfg):
        return WeightsSource("pretrained", f"{model_cfg.hub_id} found locally")
    if _hub_reachable():
        return WeightsSource("pretrained", f"{model_cfg.hub_id} from the hub", local_only=False)
    if model_cfg.weights == "pretrained":
        raise KvoptError(
            f"model.weights: got 'pretrained' but {model_cfg.hub_id!r} is not in the local cache "
            "and the hub cannot be reached; allowed here: auto or random "
            "(random weights give the same timings)"
        )
    return WeightsSource(
        "random",
        f"{model_cfg.hub_id} is not cached and the hub is unreachable: using random weights "
        "(valid for timing: the generated length is fixed)",
    )


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and return the device's cached blocks, so the next trial starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class ModelLoader:
    """Loads models and keeps the last one, reused by trials with the same dtype and attention."""

    def __init__(self, model_cfg: ModelConfig, source: WeightsSource, device: torch.device, seed: int) -> None:
        self.model_cfg = model_cfg
        self.source = source
        self.device = device
        self.seed = seed
        self._current: LoadedModel | None = None

    def get(self, dtype: str, attn_implementation: str) -> tuple[LoadedModel, bool]:
        """Return (model, reused)."""
        cur = self._current
        if cur is not None and (cur.dtype, cur.attn_implementation) == (dtype, attn_implementation):
            return cur, True
        self.release()
        start = time.perf_counter()
        model = self._load(dtype, attn_implementation)
        model.eval()
        self._current = LoadedModel(
            model=model,
            dtype=dtype,
            attn_implementation=attn_implementation,
            weights=self.source.kind,
            load_s=time.perf_counter() - start,
        )
        return self._current, False

    def release(self) -> None:
        """Drop the loaded model and free its memory."""
        if self._current is not None:
            self._current = None
            free_device_memory(self.device)

    def _load(self, dtype: str, attn_implementation: str) -> PreTrainedModel:
        torch_dtype = getattr(torch, dtype)
        if self.source.kind == "pretrained":
            return AutoModelForCausalLM.from_pretrained(
                self.model_cfg.hub_id,
                revision=self.model_cfg.revision,
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=self.model_cfg.trust_remote_code,
                local_files_only=self.source.local_only,
                device_map=str(self.device),
            )
        # Same seed for every load: a candidate's weights never depend on trial order.
        torch.manual_seed(self.seed)
        with torch.device(self.device):
            return AutoModelForCausalLM.from_config(
                build_config(self.model_cfg),
                dtype=torch_dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=self.model_cfg.trust_remote_code,
            )
