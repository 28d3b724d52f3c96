"""``python -m kvopt compare`` on two tiny studies in one real SQLite file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvopt
from kvopt.commands.compare import compare_command
from kvopt.config import METRICS
from kvopt.errors import KvoptError
from kvopt.report.compare import compare_studies
from kvopt.stored import parse_source
from tiny_studies import make_two_studies

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "80"}


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    return make_two_studies(tmp_path_factory.mktemp("compare"))


def _compare(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvopt", "compare", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_matching_candidates_side_by_side_with_ratios(storage: str):
    a, b = kvopt.load("a", storage), kvopt.load("b", storage)
    comparison = compare_studies(a, b)
    assert sorted(ra.label for ra, _ in comparison.matched) == ["dynamic/sdpa/float32/b1", "static/sdpa/float32/b1"]
    assert {r.params["batch_size"] for r in comparison.only_a} == {2}
    assert {r.params["batch_size"] for r in comparison.only_b} == {4}
    for pair in comparison.matched:
        ra, rb = pair
        assert ra.params == rb.params
        for m, ratio in comparison.ratios(pair).items():
            assert ratio == pytest.approx(rb.values[m] / ra.values[m])

    proc = _compare("a", "b", f"storage.url={storage}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    first = comparison.matched[0]
    assert re.search(r"B/A\s+" + r"\s+".join(re.escape(f"×{v:.2f}") for v in comparison.ratios(first).values()), out)
    assert f"{first[0].values['ttft_ms']:.1f}" in out and f"{first[1].values['ttft_ms']:.1f}" in out
    assert "only in A: " in out and "/b2" in out.split("only in A: ")[1].splitlines()[0]
    assert "only in B: " in out and "/b4" in out.split("only in B: ")[1].splitlines()[0]
    for name, study in (("A", a), ("B", b)):
        rec = study.recommendation
        # Confirmed or not depends on what this machine measured (and kvopt.confirm's rule).
        assert rec is not None and rec.confirmed_rounds in (0, 2)
        how = "confirmed over 2 rounds" if rec.confirmed_rounds else "unconfirmed"
        assert f"{name} recommends {rec.result.label} (trial #{rec.result.number}; {how})" in out


@pytest.mark.slow
def test_study_at_storage_form_names_each_side(storage: str, tmp_path: Path):
    # Run from a folder with no kvopt.db: each side names its own storage.
    proc = _compare(f"a@{storage}", f"b@{storage}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "measured in both" in proc.stdout
    assert parse_source("x@sqlite:///y.db", "sqlite:///d.db") == ("x", "sqlite:///y.db")
    assert parse_source("x", "sqlite:///d.db") == ("x", "sqlite:///d.db")
    with pytest.raises(KvoptError, match="allowed: STUDY or STUDY@STORAGE_URL"):
        parse_source("x@", "sqlite:///d.db")


@pytest.mark.slow
def test_a_missing_study_is_one_clear_message_and_exit_2(storage: str, tmp_path: Path):
    proc = _compare("a", "nope", f"storage.url={storage}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert re.search(
        r"study.name: got 'nope' but .* has no such study; studies there: 'a', 'b'", proc.stderr.replace("\n", " ")
    ), proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("a", "b", "storage.url=sqlite:///{tmp}/absent.db"), r"storage.url: got .*absent.db.* does not exist"),
        (("a", "b", "storage.url={tmp}/absent.log"), r"storage.url: got .*absent.log.* does not exist"),
        (("a",), r"compare: got 1 study argument\(s\) \['a'\]; allowed: exactly two"),
        (("a", "b", "study.name=x"), r"compare: got 'study.name=x'; allowed: storage.url=URL"),
        (("a@", "b"), r"compare: got 'a@'; allowed: STUDY or STUDY@STORAGE_URL"),
    ],
)
def test_bad_input_is_refused_with_exit_2_and_creates_nothing(tmp_path: Path, capsys, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    assert compare_command(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err.replace("\n", " ")), err
    assert not any(tmp_path.iterdir())  # no storage file made


@pytest.mark.slow
def test_rows_hold_both_values_and_the_ratio(storage: str):
    rows = compare_studies(kvopt.load("a", storage), kvopt.load("b", storage)).rows()
    assert len(rows) == 2
    for row in rows:
        for m in METRICS:
            assert row[f"{m}_ratio"] == pytest.approx(row[f"{m}_b"] / row[f"{m}_a"])
