"""The llama.cpp engine through kvopt's whole flow: the command, its outputs, its refusals.

A tiny Llama GGUF the tests write themselves (:func:`kvopt.engines.llamacpp.tiny.write_tiny_gguf`)
goes through the same study, search, confirmation, quality guard and outputs as a
Transformers model; ``recommended.py`` then runs where kvopt is not importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import needs_llamacpp

pytestmark = needs_llamacpp()

# A small space on the tiny model, and a short protocol: the whole study in well under a minute.
SMALL = [
    "engine=llamacpp",
    "profile=ci-micro",
    "engine.knobs.type_k=[f16,q8_0]",
    "engine.knobs.type_v=[f16,q8_0]",
    "engine.knobs.flash_attn=[false,true]",
    "engine.knobs.n_batch=[512]",
    "engine.knobs.n_ubatch=[512]",
    "engine.knobs.n_threads=[1]",
    "engine.knobs.n_threads_batch=[1]",
    "study.n_trials=5",
    "study.budget=null",
    "measure.max_seconds=2",
    "confirm.max_seconds=8",
]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvopt.engines.llamacpp.tiny import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _outputs(tmp_path: Path) -> Path:
    runs = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_a_llamacpp_study_runs_end_to_end_and_its_settings_run_without_kvopt(run_cli, tmp_path, tiny_gguf):
    done = run_cli(*SMALL, f"model.gguf={tiny_gguf}", f"storage.url=sqlite:///{tmp_path / 'k.db'}", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "engine        llamacpp" in out and "tiny (" in out
    # Without flash attention a V cache stays f16 (type_v is a knob only under flash_attn=true).
    assert "flash_attn: False, True" in out and "type_v: f16, q8_0" in out
    run = _outputs(tmp_path)
    assert run.parent.name == "tiny-ci-micro"  # named after the GGUF file
    results = json.loads((run / "results.json").read_text())
    assert results["trials"] and any(t["state"] == "COMPLETE" for t in results["trials"])
    settings = yaml.safe_load((run / "recommended.yaml").read_text())
    assert settings["engine"] == "llamacpp"
    rec = settings["recommended"]
    assert rec["cli_flags"].startswith("-c 256 -ctk ") and " -fa " in rec["cli_flags"]
    assert rec["llama_kwargs"]["type_k"] in ("f16", "q8_0") and rec["llama_kwargs"]["n_ctx"] == 256
    # The quality guard measured every quantized cache against the f16 baseline (a GGUF's own weights).
    quantized = [t for t in results["trials"] if t["params"].get("type_k") == "q8_0"]
    for trial in quantized:
        assert trial["user_attrs"]["quality"]["kind"] in ("lossy",), trial["user_attrs"]["quality"]
        assert "fidelity" in trial["user_attrs"] or trial["state"] != "COMPLETE"
    # recommended.py needs llama-cpp-python only: -I ignores PYTHONPATH and the working tree.
    script = run / "recommended.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "completion_tokens" in ran.stdout
    assert "import kvopt" not in script.read_text()


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda tmp: tmp / "absent.gguf", "does not exist"),
        (lambda tmp: _write(tmp / "model.gguf", b"not a gguf file at all"), "is not a GGUF file"),
        (lambda tmp: _odd_architecture(tmp / "odd.gguf"), "unknown model architecture"),
    ],
    ids=["missing", "not-gguf", "unknown-architecture"],
)
def test_a_bad_gguf_is_one_clear_line_exit_2_and_nothing_written(run_cli, tmp_path, make, says):
    path = make(tmp_path)
    done = run_cli("engine=llamacpp", f"model.gguf={path}", f"storage.url=sqlite:///{tmp_path / 'k.db'}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model.gguf" in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "k.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["engine=llamacpp"], "model.gguf: got None"),
        (["model.gguf=x.gguf"], "null with engine=transformers"),
        (["engine=llamacpp", "engine.knobs.type_k=[q9_9]"], "engine.knobs.type_k: got 'q9_9'; allowed: f32, f16"),
        (["engine=llamacpp", "+engine.knobs.ctx_size=[1]"], "engine.knobs.ctx_size: got 'ctx_size'; allowed: type_k"),
    ],
    ids=["no-gguf", "gguf-without-llamacpp", "unknown-cache-type", "unknown-knob"],
)
def test_engine_config_mistakes_are_named_before_any_work(run_cli, tmp_path, tiny_gguf, args, says):
    if args[0] == "engine=llamacpp" and len(args) > 1:
        args = [*args, f"model.gguf={tiny_gguf}"]
    done = run_cli(*args, f"storage.url=sqlite:///{tmp_path / 'k.db'}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "k.db").exists()


def test_kvopt_info_shows_the_build_and_what_the_model_accepts(run_cli, tiny_gguf):
    done = run_cli("info", "engine=llamacpp", f"model.gguf={tiny_gguf}")
    assert done.returncode == 0, done.stderr
    assert "llama-cpp-python 0." in done.stdout and "cache types" in done.stdout
    # A quantized V cache without flash attention: refused, with llama.cpp's own reason.
    assert "type_v=q8_0 (flash_attn=off)" in done.stdout and "flash_attn" in done.stdout


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _odd_architecture(path: Path) -> Path:
    """A well-formed GGUF of an architecture no llama.cpp build knows."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="kvopt-nonesuch")
    writer.add_block_count(1)
    writer.add_embedding_length(32)
    writer.add_head_count(1)
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_search_step_changes_the_k_type_or_flash_attention_apart():
    # The knob table's grouping (kvopt.space.Candidate.groups): one setting is the K type, or flash
    # attention with the V type under it — not one "cache" setting of every K/V/FA combination
    # (on the recorded tiny-GGUF grid that grouping made the trust region try all of them first).
    from kvopt.engines.llamacpp.candidate import Candidate, binding_defaults

    base = Candidate.from_params(binding_defaults())
    k = Candidate.from_params({**binding_defaults(), "type_k": "q8_0"})
    fa = Candidate.from_params({**binding_defaults(), "flash_attn": True, "type_v": "q8_0"})
    both = Candidate.from_params({**binding_defaults(), "type_k": "q8_0", "flash_attn": True, "type_v": "q8_0"})

    def changed(a: Candidate, b: Candidate) -> int:
        return sum(a.groups()[g] != b.groups()[g] for g in a.groups())

    assert (changed(base, k), changed(base, fa), changed(base, both)) == (1, 1, 2)
    assert base.levels() == {"type_k": "f16", "flash_attn": "False"}
    assert both.levels() == {"type_k": "q8_0", "flash_attn": "True+type_v=q8_0"}
    # The quality guard measures each cache setting once: threads and batches do not change outputs.
    faster = Candidate.from_params({**binding_defaults(), "type_k": "q8_0", "n_threads_batch": 1})
    assert faster.fidelity_params() == k.fidelity_params() != base.fidelity_params()
