"""The Python API: kvopt.tune from every input form, kvopt.load, kwargs, README's example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvopt
from kvopt.engines.transformers.candidate import Candidate
from kvopt.errors import ConfigError, StorageError
from kvopt.select import Recommendation, Result

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _readme_example() -> str:
    section = (REPO / "README.md").read_text().split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-c", _readme_example()],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    shape = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"torch\.Size\(\[\d+, 40\]\)", shape), shape
    assert (tmp_path / "kvopt.db").is_file()


@pytest.mark.slow
def test_import_is_cheap_and_every_public_name_resolves():
    code = (
        "import json, sys, kvopt\n"
        "assert 'torch' not in sys.modules, 'import kvopt loaded torch'\n"
        "from kvopt import tune, load\n"
        "missing = [n for n in kvopt.__all__ if getattr(kvopt, n, None) is None]\n"
        "assert not missing, missing\n"
        "print(json.dumps(kvopt.__all__))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"tune", "load", "Recommendation", "StoredStudy", "KvoptConfig"} <= set(json.loads(proc.stdout))


def test_every_input_form_composes_the_same_config():
    forms = [
        kvopt.compose_config(
            ["model=tiny-gpt2", "profile=ci-micro", "study.n_trials=3", "search_space.batch_size=[1,2]"]
        ),
        kvopt.compose_config(
            {
                "model": "tiny-gpt2",
                "profile": "ci-micro",
                "study": {"n_trials": 3},
                "search_space": {"batch_size": [1, 2]},
            }
        ),
        kvopt.compose_config(
            model="tiny-gpt2", profile="ci-micro", study={"n_trials": 3}, search_space={"batch_size": [1, 2]}
        ),
        # Keywords win over the dict they come with.
        kvopt.compose_config(
            {"model": "gpt2", "study": {"n_trials": 9}},
            model="tiny-gpt2",
            profile="ci-micro",
            study={"n_trials": 3},
            search_space={"batch_size": [1, 2]},
        ),
    ]
    assert all(f.raw == forms[0].raw for f in forms[1:])
    assert forms[0].model.name == "tiny-gpt2" and forms[0].study.n_trials == 3
    assert forms[0].search_space.batch_size == (1, 2)
    # A composed config handed back (a group as a full mapping) replaces the default's fields.
    again = kvopt.compose_config({"model": dict(forms[0].raw["model"]), "profile": "ci-micro"})
    assert again.model == forms[0].model
    assert kvopt.compose_config(forms[0]) is forms[0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kvopt.compose_config(model="nope"), r"model: got 'nope'; allowed: gpt2, .*tiny-gpt2"),
        (
            lambda: kvopt.compose_config(study={"n_trialz": 3}),
            r"study.n_trialz: no such setting; allowed keys of study: name, n_trials",
        ),
        (lambda: kvopt.compose_config(study={"n_trials": 0}), r"study.n_trials: got 0; allowed: an integer >= 1"),
        (lambda: kvopt.compose_config(["model=nope"]), r"model: got 'nope'"),
        (lambda: kvopt.compose_config(42), r"config: got int 42; allowed: a dict"),
        (
            lambda: kvopt.compose_config(kvopt.compose_config(model="tiny-gpt2"), seed=1),
            r"got a KvoptConfig and keyword overrides \['seed'\]",
        ),
    ],
)
def test_bad_input_names_the_field(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_tune_takes_a_validated_config_and_writes_the_settings(tmp_path: Path):
    cfg = kvopt.compose_config(
        model="tiny-gpt2",
        profile="ci-micro",
        storage="memory",
        study={"n_trials": 2},
        confirm={"rounds": 0},
        measure={"adaptive": False},
        search_space={"dtype": ["float32"]},
        scale={"lock_dir": str(tmp_path)},
    )
    result = kvopt.tune(cfg, output_dir=tmp_path)
    assert isinstance(result, kvopt.StudyResult)
    assert result.front and result.recommendation is not None
    assert result.recommendation.result in result.front
    assert {p.name for p in tmp_path.iterdir()} >= {"results.json", "recommended.yaml", "recommended.py"}


def test_a_recommendation_gives_the_candidates_kwargs():
    candidate = Candidate("quantized", "eager", "bfloat16", 4, quantized_backend="quanto", quantized_nbits=2)
    result = Result(number=3, params=candidate.params(), label=candidate.label, values={})
    rec = Recommendation(result=result, score=0.0, gains_pct=None, meets_slo=True)
    assert rec.candidate() == candidate
    assert rec.model_kwargs() == {"dtype": "bfloat16", "attn_implementation": "eager"}
    assert rec.generate_kwargs() == {
        "cache_implementation": "quantized",
        "cache_config": {"backend": "quanto", "nbits": 2},
    }


def test_load_refuses_a_storage_that_is_not_there(tmp_path: Path):
    with pytest.raises(StorageError, match=r"storage.url: got .*absent\.db.* does not exist"):
        kvopt.load("any", f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()
