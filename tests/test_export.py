"""recommended.yaml and recommended.py: written by a real run, and the snippet runs as is."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from packaging.version import Version
from transformers import AutoConfig, AutoModelForCausalLM, CompileConfig, DynamicCache

import kvopt
from conftest import model_config
from kvopt.config import METRICS
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.export import call_args, paste_snippet, plain
from kvopt.engines.transformers.prefix import generate_cache_keyword
from kvopt.engines.transformers.workload import Workload
from kvopt.report.export import StudySettings, settings_document, settings_script, write_settings
from kvopt.select import Recommendation, Result

MODEL = "tiny-gpt2"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real CLI study on the tiny model; its output folder."""
    root = tmp_path_factory.mktemp("export")
    out = root / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvopt",
            f"model={MODEL}",
            "profile=ci-micro",
            "study.n_trials=4",
            "measure.adaptive=false",
            "confirm.rounds=2",
            "search_space.dtype=[float32]",
            f"storage.url=sqlite:///{root / 'kvopt.db'}",
            f"hydra.run.dir={out}",
            f"scale.lock_dir={root}",
        ],
        cwd=root,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_yaml_holds_the_recommendation_as_measured(run_dir: Path):
    doc = yaml.safe_load((run_dir / "recommended.yaml").read_text())
    results = _results(run_dir)
    rec = results["recommendation"]
    assert doc["model"]["hub_id"] == f"kvopt/{MODEL}" and doc["profile"] == "ci-micro"
    assert doc["device"] == "cpu" and doc["workload"] == {
        "prompt_tokens": 32,
        "new_tokens": 8,
        "shared_prefix_tokens": 0,
    }
    got = doc["recommended"]
    assert got["trial"] == rec["number"] and got["params"] == rec["params"]
    assert got["values"] == pytest.approx(rec["values"])
    candidate = Candidate.from_params(rec["params"])
    assert got["model_kwargs"] == candidate.model_kwargs()
    assert got["generate_kwargs"] == plain(candidate.generate_kwargs(32, 8))
    assert got["batch_size"] == candidate.batch_size
    # The gains carry their intervals, as results.json has them. Whether the 2 rounds ran and
    # confirm depends on what this machine measured and on kvopt.confirm's rule: 0 or 2 either way.
    assert got["confirmed_rounds"] == rec["confirmed_rounds"] in (0, 2)
    assert got["gains_pct"] == pytest.approx({m: round(g, 2) for m, g in rec["gains_pct"].items()})
    assert got["gains_ci"] == rec["gains_ci"]
    assert got["meets_slo"] is True


@pytest.mark.slow
def test_alternatives_are_the_fronts_extremes(run_dir: Path):
    doc = yaml.safe_load((run_dir / "recommended.yaml").read_text())
    front = _results(run_dir)["pareto_front"]
    alternatives = doc["alternatives"]
    assert set(alternatives) == {"lowest_ttft", "highest_throughput", "lowest_memory"}
    for name, metric, pick in (
        ("lowest_ttft", "ttft_ms", min),
        ("highest_throughput", "decode_tok_s", max),
        ("lowest_memory", "peak_mem_mb", min),
    ):
        best = pick(front, key=lambda r: r["values"][metric])
        alt = alternatives[name]
        assert alt["trial"] == best["number"] and alt["params"] == best["params"]
        assert alt["values"][metric] == pytest.approx(best["values"][metric])
        assert alt["generate_kwargs"] == plain(Candidate.from_params(best["params"]).generate_kwargs())


def _snippet(script: Path, *args: str) -> subprocess.CompletedProcess:
    # kvopt is made unimportable: the snippet must need only torch and transformers.
    runner = (
        "import runpy, sys; sys.modules['kvopt'] = None; "
        f"sys.argv = [{str(script)!r}, *{list(args)!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", runner],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_snippet(script: Path, *flags: str) -> list[str]:
    proc = _snippet(script, *flags, "--exact-length", "--calls", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_snippet_runs_without_kvopt_and_generates_the_workload(run_dir: Path):
    doc = yaml.safe_load((run_dir / "recommended.yaml").read_text())
    rec = doc["recommended"]
    # No flag: the study measured random weights, so the snippet builds them again, offline.
    assert doc["model"]["weights"] == "random"
    lines = _run_snippet(run_dir / "recommended.py")
    dtype, attn = rec["model_kwargs"]["dtype"], rec["model_kwargs"]["attn_implementation"]
    assert lines[0] == f"loaded kvopt/{MODEL}: dtype torch.{dtype}, attention {attn}"
    calls = [line for line in lines if line.startswith("call ")]
    assert len(calls) == 2
    for n, line in enumerate(calls, start=1):
        assert line.startswith(f"call {n}: {rec['batch_size']} x 8 new tokens in ")


@pytest.mark.slow
def test_snippet_asked_for_weights_it_cannot_have_says_so_in_one_line(run_dir: Path):
    proc = _snippet(run_dir / "recommended.py", "--pretrained")  # offline: kvopt/tiny-gpt2 is nowhere
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no traceback
    assert proc.stderr.startswith(f"recommended.py: error: cannot load 'kvopt/{MODEL}' (")
    assert "--random-weights" in proc.stderr


@pytest.mark.slow
def test_the_same_settings_come_back_from_storage_alone(run_dir: Path):
    stored = kvopt.load(f"{MODEL}-ci-micro-cpu", f"sqlite:///{run_dir.parent / 'kvopt.db'}")
    src = StudySettings.from_stored(stored)
    assert settings_document(src) == yaml.safe_load((run_dir / "recommended.yaml").read_text())
    assert settings_script(src) == (run_dir / "recommended.py").read_text()


@pytest.mark.slow
def test_terminal_snippet_uses_the_same_kwargs(run_dir: Path):
    doc = yaml.safe_load((run_dir / "recommended.yaml").read_text())
    candidate = Candidate.from_params(doc["recommended"]["params"])
    snippet = paste_snippet(f"kvopt/{MODEL}", candidate)
    assert call_args(doc["recommended"]["model_kwargs"]) in snippet
    assert call_args(candidate.generate_kwargs()) in snippet


def _result(candidate: Candidate, number: int, ttft: float, tput: float, mem: float) -> Result:
    values = dict(zip(METRICS, (ttft, tput, mem)))
    return Result(number=number, params=candidate.params(), label=candidate.label, values=values)


def _settings(rec: Recommendation | None, front: list[Result], baseline: Result | None) -> StudySettings:
    return StudySettings(
        study="s",
        model=model_config(MODEL),
        profile="ci-micro",
        slo={},
        device="cpu",
        workload=Workload(32, 8),
        recommendation=rec,
        front=front,
        baseline=baseline,
    )


def test_a_compiled_static_cache_becomes_plain_yaml_and_valid_python(tmp_path: Path):
    compiled = Candidate("static", "sdpa", "float32", 2, compile=True)
    kwargs = compiled.generate_kwargs()
    assert isinstance(kwargs["compile_config"], CompileConfig)
    mapping = plain(kwargs)["compile_config"]
    assert CompileConfig(**mapping).to_dict() == kwargs["compile_config"].to_dict()
    assert "CompileConfig(fullgraph=False)" in call_args(kwargs)

    rec = _result(compiled, 1, 5.0, 200.0, 1.0)
    base = _result(Candidate("dynamic", "sdpa", "float32", 1), 0, 4.0, 100.0, 0.9)
    src = _settings(Recommendation(rec, 0.1, None, True), front=[base, rec], baseline=base)
    written = write_settings(tmp_path, src)
    assert [p.name for p in written] == ["recommended.yaml", "recommended.py"]
    doc = yaml.safe_load((tmp_path / "recommended.yaml").read_text())
    assert doc["recommended"]["generate_kwargs"]["compile_config"] == mapping
    assert doc["alternatives"]["lowest_ttft"]["trial"] == 0
    assert doc["alternatives"]["highest_throughput"]["trial"] == 1
    text = (tmp_path / "recommended.py").read_text()
    compile(text, "recommended.py", "exec")  # valid Python, the mapping rebuilt as a CompileConfig
    assert text == settings_script(src, rec)


def test_no_recommendation_writes_nothing(tmp_path: Path):
    written = write_settings(tmp_path, _settings(None, front=[], baseline=None))
    assert written == [] and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_a_paged_recommendation_carries_its_pool_and_runs(tmp_path: Path):
    paged = Candidate("paged", "sdpa", "float32", 3)
    rec = _result(paged, 1, 5.0, 300.0, 1.0)
    base = _result(Candidate("dynamic", "sdpa", "float32", 1), 0, 6.0, 100.0, 0.9)
    write_settings(tmp_path, _settings(Recommendation(rec, 0.1, None, True), front=[base, rec], baseline=base))
    doc = yaml.safe_load((tmp_path / "recommended.yaml").read_text())
    pool = doc["recommended"]["generate_kwargs"]["continuous_batching_config"]
    # Sized from the workload (3 requests x ceil((32 + 8) / 16) pages), not from free memory.
    assert pool["num_blocks"] == 3 * 3 and pool["max_batch_tokens"] == 3 * 32
    assert "ContinuousBatchingConfig(" in paste_snippet(f"kvopt/{MODEL}", paged, 32, 8)
    calls = [line for line in _run_snippet(tmp_path / "recommended.py", "--random-weights") if line.startswith("call ")]
    assert [c.split(" in ")[0] for c in calls] == ["call 1: 3 x 8 new tokens", "call 2: 3 x 8 new tokens"]


@pytest.mark.slow
def test_a_prefix_reuse_recommendation_fills_the_prefix_once_and_runs(tmp_path: Path):
    reuse = Candidate("dynamic", "sdpa", "float32", 2, prefix_reuse=True)
    assert reuse.generate_kwargs() == {}  # its cache is the prefix's copy, not a cache_implementation
    rec = _result(reuse, 1, 3.0, 100.0, 1.0)
    base = _result(Candidate("dynamic", "sdpa", "float32", 1, prefix_reuse=False), 0, 6.0, 100.0, 0.9)
    src = _settings(Recommendation(rec, 0.1, None, True), front=[base, rec], baseline=base)
    src = dataclasses.replace(src, workload=Workload(32, 8, shared_prefix_tokens=24))
    write_settings(tmp_path, src)
    text = (tmp_path / "recommended.py").read_text()
    assert "SHARED_PREFIX_TOKENS = 24" in text
    assert "system_ids.expand(2, -1)" in paste_snippet(f"kvopt/{MODEL}", reuse, 32, 8)
    doc = yaml.safe_load((tmp_path / "recommended.yaml").read_text())
    assert doc["workload"]["shared_prefix_tokens"] == 24 and doc["recommended"]["params"]["prefix_reuse"] is True
    proc = _snippet(tmp_path / "recommended.py", "--random-weights", "--exact-length", "--calls", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    calls = [line for line in proc.stdout.splitlines() if line.startswith("call ")]
    assert [c.split(" in ")[0] for c in calls] == ["call 1: 2 x 8 new tokens", "call 2: 2 x 8 new tokens"]
    assert "past_key_values" not in proc.stderr  # today's spelling: Transformers 5.25 warns on the old one
    # The baseline's script prefills every prompt whole.
    assert "SHARED_PREFIX_TOKENS = 0" in settings_script(src, base)


def test_the_prefix_snippet_passes_the_cache_by_the_installed_transformers_name():
    # Transformers 5.25 renamed generate's (and forward's) past_key_values to cache; the old name warns.
    keyword = generate_cache_keyword()
    assert keyword == ("cache" if Version(transformers.__version__) >= Version("5.25") else "past_key_values")
    reuse = Candidate("dynamic", "sdpa", "float32", 2, prefix_reuse=True)
    snippet = paste_snippet(f"kvopt/{MODEL}", reuse, 32, 8)
    assert f"{keyword}=prefix" in snippet and f"{keyword}=copy.deepcopy(prefix)" in snippet
    # Run as pasted, after its from_pretrained line (offline: the model is built from its architecture).
    fields = dict(model_config(MODEL).architecture)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields)).eval()
    ids = torch.randint(1, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    ids[:, :24] = ids[0, :24]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": 8, "min_new_tokens": 8}
    scope = {"torch": torch, "copy": copy, "DynamicCache": DynamicCache, "model": model, "inputs": inputs}
    scope["system_ids"] = ids[:1, :24]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # how Transformers says a name is deprecated
        exec(snippet.split("\n", 1)[1], scope)
    assert scope["out"].shape == (2, 40)
