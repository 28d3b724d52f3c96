"""The command line end to end in a subprocess, on tiny models with a temporary storage."""

from __future__ import annotations

import json
import os
import sqlite3
import sys

import optuna
import pytest
from rich.console import Console

from kvopt.attrs import Failure, failure_kind
from kvopt.report.terminal import PIPED_WIDTH, command_console, print_summary
from kvopt.select import Result

# Random weights: lossy dtypes are timed only with allow_unverified (kvopt.quality); these
# tests check a study end to end, every trial complete, as before the quality guard.
TINY = ["model=tiny-gpt2", "profile=ci-micro", "quality.allow_unverified=true"]


def _storage(tmp_path):
    return f"sqlite:///{tmp_path / 'kvopt.db'}"


@pytest.mark.slow
def test_a_study_runs_end_to_end_and_a_rerun_continues_it(run_cli, tmp_path):
    url = _storage(tmp_path)
    first = run_cli(*TINY, "study.n_trials=4", f"storage.url={url}")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "Pareto front" in out and "recommended:" in out
    assert "gain over baseline" in out
    assert "dropped" in out and "offloaded" in out  # CUDA-only choices said why, up front

    study = optuna.load_study(study_name="tiny-gpt2-ci-micro-cpu", storage=url)
    assert study.metric_names == ["ttft_ms", "decode_tok_s", "peak_mem_mb"]
    trials = study.get_trials()
    assert len(trials) == 4
    assert trials[0].user_attrs["baseline"] is True
    assert trials[0].params == {
        "cache_implementation": "dynamic",
        "attn_implementation": "sdpa",
        "dtype": "float32",
        "batch_size": 1,
    }
    # Each trial is measured in full, or stopped early because a measured one dominates it even at
    # its best run (which of the two depends on the tiny model's timings).
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE or (
            t.state == optuna.trial.TrialState.PRUNED and failure_kind(t.user_attrs) == Failure.DOMINATED
        ), (t.state, t.user_attrs)
    assert trials[0].state == optuna.trial.TrialState.COMPLETE  # the baseline, measured first, in full
    measured = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and "reused_from" not in t.user_attrs]
    for t in measured:
        n = t.user_attrs["repetitions"]
        assert 3 <= n <= 40 and len(t.user_attrs["ttft_ms_raw"]) == n  # adaptive, capped (measure.max_repetitions)
        assert set(t.user_attrs["ttft_ms_stats"]) >= {"median", "p90", "cv", "ci_low", "ci_high"}
        assert t.user_attrs["noisy"] == (t.user_attrs["stopped_because"] != "precise")
        assert t.user_attrs["setup_s"] > 0
        assert t.user_attrs["kv_cache_mb"] > 0
    assert "machine" in study.user_attrs and "config" in study.user_attrs
    first_values = [t.values for t in trials]

    results = list(tmp_path.glob("outputs/*/*/results.json"))
    assert len(results) == 1
    payload = json.loads(results[0].read_text())
    assert len(payload["trials"]) == 4
    assert payload["recommendation"]["candidate"]
    assert payload["pareto_front"]

    second = run_cli(*TINY, "study.n_trials=2", f"storage.url={url}")
    assert second.returncode == 0, second.stderr
    assert "continuing: 4 trials stored" in second.stdout
    trials = optuna.load_study(study_name="tiny-gpt2-ci-micro-cpu", storage=url).get_trials()
    assert len(trials) == 6
    assert [t.values for t in trials[:4]] == first_values  # nothing measured is lost
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1


@pytest.mark.slow
def test_journal_storage_and_a_clamped_prompt(run_cli, tmp_path):
    journal = tmp_path / "study.journal"
    result = run_cli(
        "model=tiny-gpt2",
        "profile=rag",
        "study.n_trials=2",
        "storage=journal",
        f"storage.url={journal}",
        "profile.output_lengths=[4]",
        "profile.repetitions=1",
        "search_space.batch_size=[1]",
    )
    assert result.returncode == 0, result.stderr
    # rag's three contexts with 4 new tokens all clamp to tiny-gpt2's 256 positions: one shape.
    assert "8192+4 -> 252+4" in result.stdout and "3 shapes became 1" in result.stdout
    assert journal.stat().st_size > 0


def _assert_refused(result, *needles, db=None):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr
    if db is not None and db.exists():
        names = sqlite3.connect(db).execute("select study_name from studies").fetchall()
        assert names == []


@pytest.mark.slow
def test_bad_input_is_refused_before_any_work(run_cli, tmp_path):
    db = tmp_path / "kvopt.db"
    url = f"storage.url=sqlite:///{db}"
    cases = [
        (["model=foo"], ["model: got 'foo'", "tiny-gpt2"]),
        (["profile=nope"], ["profile: got 'nope'", "ci-micro"]),
        (["sampler=annealing"], ["sampler: got 'annealing'", "tpe"]),
        (["search_space.cache_implementation=[foo]"], ["search_space.cache_implementation: got 'foo'"]),
        (["profile.weights.ttft_ms=0.9"], ["profile.weights", "sum to 1"]),
        (["study.n_trials=0"], ["study.n_trials: got 0"]),
        (["search_space.batch_size=[-2]"], ["search_space.batch_size: got -2"]),
        (["device=cuda"], ["device: got 'cuda'", "CUDA is not available"]),
    ]
    for args, needles in cases:
        _assert_refused(run_cli(*TINY, url, *args), *needles, db=db)
    assert not (tmp_path / "outputs").exists()  # no half-written output folder


@pytest.mark.slow
def test_unopenable_storage_is_refused_and_credentials_never_printed(run_cli, tmp_path):
    missing = run_cli(*TINY, "storage.url=sqlite:////no/such/folder/k.db")
    _assert_refused(missing, "storage.url", "/no/such/folder")
    remote = run_cli(*TINY, "storage.url=postgresql://kv:hunter2@127.0.0.1:1/kv", timeout=60)
    _assert_refused(remote, "storage.url", "kv:***@127.0.0.1")
    assert "hunter2" not in remote.stdout + remote.stderr


def test_help_lists_the_config_groups_and_their_options(run_cli):
    result = run_cli("--help")
    assert result.returncode == 0
    for line in (
        "model: gpt2, qwen2.5-0.5b, tiny-gpt2, tiny-llama",
        "profile: chat-agent, ci-micro, longform, rag, traffic",
        "sampler: gp, grid, nsga2, profile, random, tpe",
        "storage: journal, memory, sqlite",
    ):
        assert line in result.stdout


@pytest.mark.slow
def test_info_says_what_runs_here_and_why_not(run_cli):
    result = run_cli("info", "model=tiny-gpt2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "torch" in out and "transformers" in out and "optuna" in out
    assert "cache_implementation=static" in out
    assert "offloaded" in out and "CUDA" in out
    assert "flex_attention" in out


def test_a_piped_log_keeps_each_table_row_on_one_line(capsys, monkeypatch):
    # pytest captures stdout: not a terminal, as in `python -m kvopt ... | tee run.log`.
    monkeypatch.delenv("COLUMNS", raising=False)
    console = command_console()
    assert not console.is_terminal and console.width == PIPED_WIDTH
    label = "quantized-quanto4/flash_attention_2/bfloat16/b32+compile"  # a long label: rich at 80 wraps it
    values = {"ttft_ms": 1234.5, "decode_tok_s": 98765.4, "peak_mem_mb": 4321.0}
    slow = {"ttft_ms": 2000.0, "decode_tok_s": 10.0, "peak_mem_mb": 5000.0}
    base = Result(0, {}, "dynamic/sdpa/float32/b1", slow, is_baseline=True)
    front = [Result(7, {}, label, values)]
    print_summary(console, front, base, None, {"COMPLETE": 2}, None)
    row = next(line for line in capsys.readouterr().out.splitlines() if label in line)
    assert row.split() == ["7", label, "1234.5", "98765.4", "4321.0"]
    # The same table at rich's 80 columns cuts the row (what a piped log got before).
    narrow = Console(width=80, file=sys.stdout)
    print_summary(narrow, front, base, None, {"COMPLETE": 2}, None)
    assert not any(label in line for line in capsys.readouterr().out.splitlines())
    # A COLUMNS the user set still decides.
    monkeypatch.setenv("COLUMNS", "100")
    assert command_console().width == 100


def test_a_terminal_keeps_the_width_rich_gives_it(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty:
        monkeypatch.setattr(sys, "stdout", tty)
        console = command_console()
        assert console.is_terminal and console.width == Console(soft_wrap=True).width
        assert console.soft_wrap
    os.close(leader)
