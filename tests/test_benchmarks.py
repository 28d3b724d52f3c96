"""The benchmark scripts, each run for real in a tiny mode, and their invariants."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume  # an independent oracle for the test only

from kvopt_bench.hypervolume import hypervolume_2d, hypervolume_3d

REPO = Path(__file__).resolve().parent.parent
# A 4-candidate space (dynamic/static x batch 1, 2) with fixed repetitions: seconds, not minutes.
TINY = [
    "search_space.cache_implementation=[dynamic,static]",
    "search_space.attn_implementation=[sdpa]",
    "search_space.dtype=[float32]",
    "search_space.batch_size=[1,2]",
    "measure.adaptive=false",
]


def script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_hypervolume_known_cases() -> None:
    ref = (1.0, 1.0, 1.0)
    assert hypervolume_3d([(0.0, 0.0, 0.0)], ref) == pytest.approx(1.0)
    assert hypervolume_3d([(0.5, 0.5, 0.5)], ref) == pytest.approx(0.125)
    # Two boxes of 0.25 overlapping in 0.125; a dominated point and one past the reference add nothing.
    pts = [(0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.6, 0.6, 0.6), (1.2, 0.0, 0.0)]
    assert hypervolume_3d(pts, ref) == pytest.approx(0.375)
    assert hypervolume_2d([(0.0, 0.5), (0.5, 0.0)], (1.0, 1.0)) == pytest.approx(0.75)
    assert hypervolume_3d([], ref) == 0.0
    rng = random.Random(0)
    for _ in range(50):
        points = [tuple(rng.random() for _ in range(3)) for _ in range(rng.randint(1, 25))]
        expected = compute_hypervolume(np.array(points), np.array([1.1, 1.1, 1.1]))
        assert hypervolume_3d(points, (1.1, 1.1, 1.1)) == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grid")
    proc = script(
        "record_grid.py",
        "--model",
        "tiny-gpt2",
        "--profile",
        "ci-micro",
        "--name",
        "tiny",
        "--out-dir",
        str(out),
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    return out / "grid_tiny.json"


@pytest.mark.slow
def test_record_grid_writes_every_candidate_with_provenance(grid: Path) -> None:
    data = json.loads(grid.read_text())
    assert data["candidates"] == data["space"]["size"] == 4 and data["failed"] == 0
    assert {"machine", "date", "workload", "grid_wall_s", "load_1min_before", "load_1min_after"} <= set(data)
    assert data["machine"]["versions"]["torch"]
    assert sum(r["baseline"] for r in data["rows"]) == 1
    for row in data["rows"]:
        assert len(row["ttft_ms"]) == len(row["decode_tok_s"]) == row["n"] == 3  # profile.repetitions
        assert row["peak_mem_mb"] > 0 and row["timed_runs_s"] > 0
    assert grid.with_suffix(".csv").read_text().count("\n") == 5  # header + 4 rows


@pytest.mark.slow
def test_bench_search_hypervolume_invariants(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    proc = script("bench_search.py", "--grid", str(grid), "--seeds", "2", "--gp-seeds", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["samplers"]) == {"profile", "tpe", "gp", "nsga2", "random", "grid"}
    # The profile sampler is also replayed with the convergence stop: where it stopped, and
    # whether it recommended the grid's best, for every seed.
    stop = data["samplers"]["profile"]["convergence_stop"]
    assert stop["seeds"] == 2 and 0 <= stop["recommended_best_within_noise"] <= 2
    assert 1 <= stop["measurements_at_stop"]["median"] <= data["space_size"]
    within = data["samplers"]["profile"]["pruning_on"]["measurements_to_best_within_2pct"]["median"]
    assert within is None or 1 <= within <= data["space_size"]
    for name, entry in data["samplers"].items():
        for mode in ("pruning_on", "pruning_off"):
            curve = entry[mode]["hv_curve_median"]
            assert all(0.0 <= v <= 1.0 + 1e-12 for v in curve), (name, curve)
            assert all(b >= a - 1e-12 for a, b in itertools.pairwise(curve)), (name, curve)
            summary = entry[mode]
            # A measurement is a trial that did not repeat a candidate: never more than the trials.
            for level in ("95", "99"):
                trials = summary[f"trials_to_{level}"]["median"]
                measured = summary[f"measurements_to_{level}"]["median"]
                assert (trials is None) == (measured is None) and (measured is None or measured <= trials)
            assert summary["hv_at_30pct_measurements"]["median"] >= summary["hv_at_30pct"]["median"] - 1e-12
    # The grid order measures every candidate: without pruning it ends on the whole front.
    assert data["samplers"]["grid"]["pruning_off"]["hv_curve_median"][-1] == pytest.approx(1.0)
    # Baseline first, then the 4 grid points (the baseline's one is reused): at most 5 trials.
    assert data["samplers"]["grid"]["pruning_off"]["trials_to_99"]["median"] <= 5
    assert data["pruning_rule_random_orders"]["candidates"] == 4


@pytest.mark.slow
def test_bench_overhead_and_gain_on_a_tiny_study(grid: Path, tmp_path: Path) -> None:
    extra = ["--extra", "study.n_trials=3", "confirm.rounds=2", *TINY]
    gain_out = tmp_path / "gain.json"
    proc = script(
        "bench_gain.py",
        "--model",
        "tiny-gpt2",
        "--profiles",
        "ci-micro",
        "--grid",
        f"ci-micro={grid}",
        "--out",
        str(gain_out),
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    case = json.loads(gain_out.read_text())["cases"][0]
    assert case["recommendation"] and case["baseline"]
    if case["gains_ci"] is not None:  # None only when confirmation had < 2 finalists
        for metric in ("ttft_ms", "decode_tok_s"):
            assert {"pct", "ci_low", "ci_high", "ci_coverage"} <= set(case["gains_ci"][metric])
    placed = case["grid"]
    assert placed["workload_matches"] is True and placed["recommendation_in_grid"] is True
    assert 1 <= placed["recommendation_rank"] <= placed["grid_candidates"] == 4
    assert placed["shortfall_vs_grid_best_pct"] >= 0.0

    over_out = tmp_path / "overhead.json"
    proc = script("bench_overhead.py", "--from", str(gain_out), "--out", str(over_out))
    assert proc.returncode == 0, proc.stderr
    c = json.loads(over_out.read_text())["cases"][0]
    assert 0.0 <= c["overhead_share"] <= c["overhead_share_trials_only"] <= 1.0
    if case["gains_ci"] is not None:  # the confirmation ran: its timed calls are measured time
        assert c["seconds"]["confirmed"] > 0.0
    assert all(s >= -0.05 for s in c["share"].values()), c["share"]  # clocks of two processes: ms apart
    assert sum(c["seconds"].values()) == pytest.approx(c["wall_s"], rel=1e-6)


@pytest.mark.slow
def test_bench_repeat_reports_each_runs_answer_and_the_spread(tmp_path: Path) -> None:
    out = tmp_path / "repeat.json"
    extra = ["study.n_trials=2", "confirm.rounds=5", *TINY]
    proc = script(
        "bench_repeat.py",
        "--model",
        "tiny-gpt2",
        "--profile",
        "ci-micro",
        "--runs",
        "2",
        "--out",
        str(out),
        "--extra",
        *extra,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 2 and report["machine"]["cpu"]
    answers = {(r["recommendation"], tuple(r["tie_set"])) for r in report["runs"]}
    assert report["same_answer"] == (len(answers) == 1)
    for run in report["runs"]:
        assert run["recommendation"] and run["wall_s"] > 0
        for trial in run["trials"]:  # whole calls on ci-micro's 8 new tokens, fixed repetitions
            assert trial["protocol"] == "full-length" and trial["repetitions"] == 3
            assert trial["ttft_ci_pct"] >= 0.0 and trial["decode_ci_pct"] >= 0.0
    assert report["measured_trials"] == sum(len(r["trials"]) for r in report["runs"])
    assert (tmp_path / "repeat" / "tiny-gpt2-ci-micro-seed1.out.txt").is_file()


@pytest.mark.slow
def test_bench_window_compares_the_window_with_whole_calls(tmp_path: Path) -> None:
    out = tmp_path / "window.json"
    proc = script(
        "bench_window.py",
        "--models",
        "tiny-gpt2",
        "--profiles",
        "longform",
        "--candidates",
        "dynamic/sdpa/b1",
        "--samples",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    cases = json.loads(out.read_text())["cases"]
    # longform on tiny-gpt2 (256 positions): one shape, 128+128, where the split protocol applies.
    assert [(c["shape"], c["candidate"]) for c in cases] == [("128+128", "dynamic/sdpa/float32/b1")]
    case = cases[0]
    assert len(case["window_tok_s"]) == len(case["full_tok_s"]) == 2
    assert case["window_steps"] == 16 and case["window_sample_s"] < case["full_sample_s"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("bench_search.py", ["--grid", "/nonexistent.json"], "--grid"),
        ("record_grid.py", ["--model", "nope"], "model"),
        ("bench_overhead.py", ["--case", "tiny-gpt2"], "--case"),
    ],
)
def test_bad_input_is_one_clear_line(name: str, args: list[str], field: str) -> None:
    proc = script(name, *args)
    assert proc.returncode == 2
    assert field in proc.stderr and "Traceback" not in proc.stderr
