"""Loading models and running generate on a fixed workload."""

from kvopt.engine.generation import GenerateRun, timed_generate
from kvopt.engine.loading import LoadedModel, ModelLoader, WeightsSource, build_config
from kvopt.engine.source import ModelSource, resolve_config, resolve_model
from kvopt.engine.workload import Workload, make_inputs, make_workload

__all__ = [
    "GenerateRun",
    "timed_generate",
    "LoadedModel",
    "ModelLoader",
    "WeightsSource",
    "build_config",
    "ModelSource",
    "resolve_model",
    "resolve_config",
    "Workload",
    "make_inputs",
    "make_workload",
]
