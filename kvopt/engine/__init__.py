"""Loading models and running generate on a fixed workload."""

from kvopt.engine.generation import GenerateRun, timed_generate
from kvopt.engine.loading import LoadedModel, ModelLoader, WeightsSource, build_config, resolve_weights
from kvopt.engine.workload import Workload, make_inputs, make_workload

__all__ = [
    "GenerateRun",
    "timed_generate",
    "LoadedModel",
    "ModelLoader",
    "WeightsSource",
    "build_config",
    "resolve_weights",
    "Workload",
    "make_inputs",
    "make_workload",
]
