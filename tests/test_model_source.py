"""Any model: a folder written by save_pretrained, a hub id in the local cache; errors when it is not there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig, T5Config

from conftest import model_config
from kvopt.config import ModelConfig
from kvopt.engines.transformers.loading import ModelLoader
from kvopt.engines.transformers.source import resolve_model
from kvopt.errors import KvoptError
from kvopt.machine import resolve_device
from kvopt.workload import max_positions

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# A user's own model: not the architecture of any shipped YAML (llama, 3 layers, 200 positions).
OWN = dict(
    vocab_size=512,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=200,
)


def _save(folder: Path, *, dtype: str = "float32", **fields) -> Path:
    """A tiny random causal LM written by save_pretrained, as a user's checkpoint is."""
    config = LlamaConfig(**{**OWN, **fields})
    model = AutoModelForCausalLM.from_config(config)
    model.to(getattr(__import__("torch"), dtype)).save_pretrained(folder)
    return folder


def _gpt2() -> ModelConfig:
    """The default model group: its YAML (gpt2's architecture) must not describe another model."""
    return model_config("gpt2")


def test_a_saved_folder_is_the_model_with_its_own_config(tmp_path):
    folder = _save(tmp_path / "ckpt", dtype="bfloat16")
    source = resolve_model(replace(_gpt2(), hub_id=str(folder)))
    m = source.model
    assert (m.name, m.hub_id, m.dtype) == ("ckpt", str(folder.resolve()), "bfloat16")
    assert m.model_type == "llama" and m.architecture["num_hidden_layers"] == 3
    assert max_positions(m) == 200
    assert (source.origin, source.weights.kind) == ("folder", "pretrained")
    loaded, _ = ModelLoader(m, source.weights, resolve_device("cpu"), seed=0).get(m.dtype, "sdpa")
    assert loaded.model.config.num_hidden_layers == 3 and loaded.weights == "pretrained"

    # Only the config left: random weights of the model's *own* architecture, and said so.
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    source = resolve_model(replace(_gpt2(), hub_id=str(folder)))
    assert source.weights.kind == "random" and "no weights in the folder" in source.weights.reason
    assert source.model.architecture["num_hidden_layers"] == 3
    with pytest.raises(KvoptError, match=r"^model.weights: got 'pretrained'"):
        resolve_model(replace(_gpt2(), hub_id=str(folder), weights="pretrained"))


def _fake_cache(cache: Path, repo_id: str, source: Path, files: tuple[str, ...]) -> Path:
    """The Hugging Face cache layout: refs/main names a commit, snapshots/<commit>/ holds the files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name in files:
        shutil.copy(source / name, snapshot / name)
    return snapshot


def test_a_cached_hub_id_is_the_model_pinned_to_its_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    saved = _save(tmp_path / "saved", max_position_embeddings=160)
    snapshot = _fake_cache(cache, "someone/tiny-chat", saved, ("config.json",))
    user = replace(_gpt2(), hub_id="someone/tiny-chat")

    source = resolve_model(user)  # offline, config only
    m = source.model
    assert (m.name, m.hub_id, m.revision, m.dtype) == ("tiny-chat", "someone/tiny-chat", COMMIT, "float32")
    assert m.model_type == "llama" and max_positions(m) == 160
    assert source.weights.kind == "random" and "built from the model's own config.json" in source.weights.reason

    shutil.copy(saved / "model.safetensors", snapshot / "model.safetensors")
    source = resolve_model(user)
    assert source.weights.kind == "pretrained" and source.origin == "cache"
    assert f"commit {COMMIT[:12]}" in source.weights.reason
    loaded, _ = ModelLoader(source.model, source.weights, resolve_device("cpu"), seed=0).get("float32", "eager")
    assert loaded.weights == "pretrained" and loaded.model.config.max_position_embeddings == 160
    # A name the user set stays.
    assert resolve_model(replace(user, name="mine")).model.name == "mine"


def _not_causal(tmp_path: Path) -> str:
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64, vocab_size=64).save_pretrained(tmp_path / "t5")
    return str(tmp_path / "t5")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda tmp: "/nonexistent/dir", "but there is no such folder"),
        (lambda tmp: "./not-here", "but there is no such folder"),
        (lambda tmp: str(tmp), "a folder without config.json"),
        (_not_causal, "which is not a causal LM"),
        (lambda tmp: "someone/not-cached", "not in the local Hugging Face cache and the hub cannot be reached"),
    ],
    ids=["no-such-path", "no-such-relative-path", "no-config", "not-causal", "not-cached-offline"],
)
def test_a_model_that_is_not_there_is_one_line(tmp_path, make, needle):
    with pytest.raises(KvoptError) as info:
        resolve_model(replace(_gpt2(), hub_id=make(tmp_path)))
    message = str(info.value)
    assert message.startswith("model.hub_id: got ") and needle in message and "allowed" in message
    assert "\n" not in message


@pytest.mark.slow  # a CLI process / a study and a script process: seconds
def test_the_cli_refuses_a_missing_model_and_writes_nothing(run_cli, tmp_path):
    # The example: it used to tune a random tiny-gpt2 instead (and with weights=pretrained, a traceback).
    result = run_cli("model=tiny-gpt2", "profile=ci-micro", "model.hub_id=/nonexistent/dir")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        "kvopt: error: model.hub_id: got '/nonexistent/dir' but there is no such folder; allowed: an existing "
        "folder with config.json, or a hub id such as Qwen/Qwen2.5-7B-Instruct"
    ]
    assert list(tmp_path.iterdir()) == []  # no kvopt.db, no outputs/


@pytest.mark.slow  # a CLI process / a study and a script process: seconds
def test_a_study_of_a_folder_names_it_and_recommended_py_loads_it(tmp_path):
    import kvopt

    folder = _save(tmp_path / "my-ckpt")
    out = tmp_path / "run"
    result = kvopt.tune(
        ["profile=ci-micro", f"model.hub_id={folder}", f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}"],
        study={"n_trials": 2},
        measure={"adaptive": False},
        confirm={"rounds": 0},
        search_space={"dtype": ["float32"]},
        scale={"lock_dir": str(tmp_path)},
        output_dir=out,
    )
    assert result.study_name == "my-ckpt-ci-micro-cpu"
    doc = yaml.safe_load((out / "recommended.yaml").read_text())
    assert doc["model"] == {"name": "my-ckpt", "hub_id": str(folder), "revision": "main", "weights": "pretrained"}
    stored = kvopt.load(result.study_name, f"sqlite:///{tmp_path / 'kvopt.db'}").attrs["config"]["model"]
    assert stored["architecture"]["num_hidden_layers"] == 3 and stored["hub_id"] == str(folder)

    # recommended.py, run as is from another folder: it loads the folder the study measured.
    script = subprocess.run(
        [sys.executable, str(out / "recommended.py"), "--calls", "1"],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert script.returncode == 0, script.stderr[-2000:]
    assert script.stdout.startswith(f"loaded {folder}: dtype torch.float32")


def test_the_model_the_user_gave_names_studies_and_output_folders(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from kvopt.compose import model_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    assert model_name("gpt2", "openai-community/gpt2") == "gpt2"  # the option's own hub id
    assert model_name("gpt2", "Qwen/Qwen2.5-7B-Instruct") == "Qwen2.5-7B-Instruct"
    assert model_name("gpt2", "./ckpt") == "ckpt"
    assert model_name("tiny-gpt2", "kvopt/tiny-llama") == "tiny-llama"  # another option's hub id
    assert model_name("mine", "Qwen/Qwen2.5-7B-Instruct") == "mine"  # a name the user set
    # conf/config.yaml's hydra.run.dir resolves it the same way.
    run_dir = OmegaConf.create(
        {
            "model": {"name": "gpt2", "hub_id": "Qwen/Qwen2.5-7B-Instruct"},
            "dir": "${kvopt_model_name:${model.name},${model.hub_id}}",
        }
    )
    assert run_dir.dir == "Qwen2.5-7B-Instruct"


def test_a_renamed_shipped_model_keeps_the_architecture_the_user_gave() -> None:
    """``model=tiny-llama model.name=mine model.architecture.…=…`` is the user's model, not tiny-llama
    silently (it was: the shipped hub id brought back the shipped architecture and name)."""
    from kvopt.compose import compose_config

    cfg = compose_config(["model=tiny-llama", "model.name=small-llama", "model.architecture.num_hidden_layers=4"])
    source = resolve_model(cfg.model)
    assert source.model.name == "small-llama"
    assert source.model.architecture["num_hidden_layers"] == 4
    # Another shipped option's hub id under a shipped name is still that option, whole.
    other = resolve_model(compose_config(["model=tiny-gpt2", "model.hub_id=kvopt/tiny-llama"]).model)
    assert other.model.name == "tiny-llama" and other.model.architecture["model_type"] == "llama"
