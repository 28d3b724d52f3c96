"""What a memory model predicts for one candidate: its peak memory, by part.

Each engine has its own memory model (the Transformers engine's in
``kvopt/engines/transformers/predict.py``); the core compares what they predict with the
budget (:mod:`kvopt.screen`), with a trial's measured peak, and uses it as the performance
model's memory prior.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvopt.metrics import MB

__all__ = ["MemoryPrediction"]


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted peak memory of a candidate, by part, in bytes."""

    weights_bytes: int
    kv_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        """Weights + KV cache + activations."""
        return self.weights_bytes + self.kv_bytes + self.activation_bytes

    @property
    def total_mb(self) -> float:
        """The total in MB (see :data:`kvopt.metrics.MB`)."""
        return self.total_bytes / MB

    def as_dict(self) -> dict[str, float]:
        """The prediction as trial user attrs (``predicted_mem_mb`` and its parts)."""
        return {
            "predicted_mem_mb": self.total_mb,
            "predicted_weights_mb": self.weights_bytes / MB,
            "predicted_kv_mb": self.kv_bytes / MB,
            "predicted_activation_mb": self.activation_bytes / MB,
        }
