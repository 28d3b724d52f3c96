"""Loading a model: pretrained weights when they can be had, random weights otherwise.

Which of the two, and from where, is decided once by :mod:`kvopt.engines.transformers.source`.

Random weights are valid for timing because kvopt always generates a fixed number of
tokens (``min_new_tokens == max_new_tokens``): the work done does not depend on values.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from kvopt.config import ModelConfig
from kvopt.engines.base import WeightsSource
from kvopt.measure.memory import free_device_memory

__all__ = [
    "WeightsSource",
    "LoadedModel",
    "ModelLoader",
    "build_config",
    "free_device_memory",
]

log = logging.getLogger(__name__)


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
