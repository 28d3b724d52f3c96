"""Shared fixtures: tiny random-weight models, the CLI in a subprocess, offline always."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kvopt.config import ModelConfig, ProfileConfig, validate_profile

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"

# Tests never touch the model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)


def load_yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def model_config(name: str) -> ModelConfig:
    data = load_yaml("model", name)
    return ModelConfig(**{k: data[k] for k in ModelConfig.__dataclass_fields__})


def profile_config(name: str, **overrides) -> ProfileConfig:
    return validate_profile({**load_yaml("profile", name), **overrides})


@pytest.fixture
def tiny_gpt2() -> ModelConfig:
    return model_config("tiny-gpt2")


@pytest.fixture
def tiny_llama() -> ModelConfig:
    return model_config("tiny-llama")


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run ``python -m kvopt ARGS`` in tmp_path; return the CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "100"}
        return subprocess.run(
            [sys.executable, "-m", "kvopt", *args],
            cwd=cwd or tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def transformers_engine(model: ModelConfig | str = "tiny-gpt2", kind: str = "random", device: str = "cpu"):
    """The Transformers engine for ``model`` (a shipped option's name or a config) with ``kind`` weights."""
    from kvopt.engines.base import WeightsSource
    from kvopt.engines.transformers.engine import TransformersEngine

    cfg = model_config(model) if isinstance(model, str) else model
    return TransformersEngine(cfg, WeightsSource(kind, "test"), torch.device(device))


def needs_llamacpp() -> pytest.MarkDecorator:
    """Skip a llama.cpp test where llama-cpp-python is not installed; fail instead under KVOPT_REQUIRE_LLAMACPP (CI)."""
    from kvopt.engines.llamacpp.build import missing

    why = missing()
    if why is not None and os.environ.get("KVOPT_REQUIRE_LLAMACPP"):
        raise RuntimeError(f"KVOPT_REQUIRE_LLAMACPP is set but {why}")
    return pytest.mark.skipif(why is not None, reason=f"the llama.cpp engine needs llama-cpp-python: {why}")
