"""Stored studies and the report: read back from storage alone, written at the end of a run,
re-created by ``kvopt report``, escaped, and refused cleanly for a study or storage that is
not there."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from kvopt.commands.dashboard import dashboard_command
from kvopt.commands.report import report_command
from kvopt.errors import StorageError
from kvopt.report.content import MIN_IMPORTANCE_TRIALS, parameter_importance
from kvopt.stored import load_study
from report_helpers import STUDY, hostile_copy, make_study, run_kvopt

N_TRIALS = 8  # enough complete trials for parameter importance


@pytest.fixture(scope="module")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real study through the CLI: 8 short trials of tiny-gpt2 and a short confirmation.

    No dominance pruning and no convergence stop, so all 8 trials complete and parameter
    importance is computed.
    """
    return make_study(
        tmp_path_factory.mktemp("report"),
        f"study.n_trials={N_TRIALS}",
        "confirm.rounds=5",
        "measure.adaptive=false",
        "pruning.dominated=false",
        "study.converge=false",
    )


@pytest.mark.slow
def test_stored_study_matches_what_the_run_printed_and_wrote(study_run: dict):
    stored = load_study(STUDY, study_run["url"])
    written = json.loads((study_run["run"] / "results.json").read_text())
    assert stored.name == STUDY and stored.storage == study_run["url"]
    assert stored.attrs["model"] == "tiny-gpt2" and stored.attrs["profile"] == "ci-micro"
    assert [t["number"] for t in stored.trials] == [t["number"] for t in written["trials"]]
    assert [r.number for r in stored.front] == [r["number"] for r in written["pareto_front"]]
    assert stored.baseline is not None and stored.baseline.number == written["baseline"]["number"]
    # Whether there were finalists to confirm, and whether 3 rounds confirm, depends on what this
    # machine measured (the baseline best, every other's band below it: nothing to confirm) and
    # on kvopt.confirm's rule; either way the stored record rebuilds the decision the run made.
    rec, run_rec = stored.recommendation, written["recommendation"]
    assert rec is not None and rec.confirmed_rounds == run_rec["confirmed_rounds"] in (0, 5)
    assert "confirmation" in stored.attrs or rec.confirmed_rounds == 0
    assert rec.result.number == run_rec["number"]
    assert rec.gains_pct == run_rec["gains_pct"]
    assert rec.gains_ci == run_rec["gains_ci"]
    assert rec.note == run_rec["note"]
    assert f"recommended: {rec.result.label} (trial #{rec.result.number})" in study_run["stdout"]


@pytest.mark.slow
def test_a_journal_copy_of_the_study_loads_the_same(study_run: dict, tmp_path: Path):
    journal = tmp_path / "copy.journal"
    optuna.copy_study(
        from_study_name=STUDY,
        from_storage=study_run["url"],
        to_storage=JournalStorage(JournalFileBackend(str(journal))),
    )
    copied, original = load_study(STUDY, str(journal)), load_study(STUDY, study_run["url"])
    assert copied.storage == f"journal file {journal}"
    a, b = copied.recommendation, original.recommendation
    assert a is not None and b is not None
    assert (a.result, a.gains_pct, a.gains_ci, a.note) == (b.result, b.gains_pct, b.gains_ci, b.note)
    assert copied.trials and [t["state"] for t in copied.trials] == [t["state"] for t in original.trials]


@pytest.mark.slow
def test_missing_study_names_the_studies_that_are_there(study_run: dict):
    with pytest.raises(StorageError, match=rf"study.name: got 'nope' but .* studies there: '{STUDY}'"):
        load_study("nope", study_run["url"])


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_storage_path_that_is_not_there_is_refused_and_not_created(tmp_path: Path, kind: str):
    path = tmp_path / ("absent.db" if kind == "sqlite" else "absent.journal")
    url = f"sqlite:///{path}" if kind == "sqlite" else str(path)
    with pytest.raises(StorageError, match=r"storage.url: got .*absent.* does not exist"):
        load_study(STUDY, url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_file_of_another_kind_is_refused_with_one_line(study_run: dict):
    db = study_run["url"][len("sqlite:///") :]
    with pytest.raises(StorageError, match=r"storage.url: cannot read journal file") as info:
        load_study(STUDY, db)  # a SQLite file named as a journal path
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_the_run_writes_the_report_with_every_part(study_run: dict):
    run = study_run["run"]
    md = (run / "report.md").read_text()
    html = (run / "report.html").read_text()
    stored = load_study(STUDY, study_run["url"])
    rec = stored.recommendation
    assert rec is not None
    for text in (md, html):
        for part in (
            "tiny-gpt2",
            "ci-micro",
            "AMD" if "AMD" in stored.attrs["machine"]["cpu"] else "",
            "transformers 5.",
            "optuna 5.",
            "Pareto front",
            "Parameter importance",
            "Noise flags",
            "Every trial",
            rec.result.label,
            f"{rec.gains_pct['decode_tok_s']:+.1f}%",
        ):
            assert part in text, part
        # 5 rounds: confirmed if the rounds told the finalists apart (or tied them), else said not to be.
        if rec.confirmed_rounds:
            assert "median of 5 paired interleaved rounds" in text
        elif "confirmation" in stored.attrs:
            assert "not confirmed" in text
        assert "PED-ANOVA" in text and "not computed" not in text
    # Plots: files for report.md, inline SVG with one mark per measured candidate in report.html.
    assert "![TTFT against decode throughput" in md and (run / "plots" / "pareto.svg").is_file()
    assert {p.name for p in (run / "plots").iterdir()} == {"pareto.svg", "objectives.svg", "importance.svg"}
    pareto = html[html.index('id="plot-pareto"') :]
    pareto = pareto[: pareto.index("</svg>")]
    assert len(re.findall(r'class="mark [^"]*" data-trial="(\d+)"', pareto)) == len(stored.results)
    # Every trial has a row with its state.
    for t in stored.trials:
        assert re.search(rf"\| {t['number']} \| {t['state'].lower()} \|", md), t["number"]
    # Offline: no scripts, no remote resources.
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


@pytest.mark.slow
def test_kvopt_report_recreates_the_same_report_from_storage(study_run: dict, tmp_path: Path):
    out = tmp_path / "again"
    proc = run_kvopt("report", f"study.name={STUDY}", f"storage.url={study_run['url']}", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'report.html'}" in proc.stdout
    for name in ("report.md", "report.html", "plots/pareto.svg", "plots/objectives.svg", "plots/importance.svg"):
        assert (out / name).read_text() == (study_run["run"] / name).read_text(), name


@pytest.mark.slow
def test_importance_says_plainly_when_there_are_too_few_trials(study_run: dict):
    source = optuna.load_study(study_name=STUDY, storage=study_run["url"])
    few = optuna.create_study(directions=source.directions)
    few.add_trials(source.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[:3])
    importance = parameter_importance(few)
    assert importance.values is None
    assert importance.message == (
        f"not computed: parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials "
        "and this study has 3; run more trials (study.n_trials) to see it"
    )


@pytest.mark.slow
def test_every_stored_string_is_escaped(study_run: dict, tmp_path: Path):
    name = hostile_copy(study_run["url"])
    out = tmp_path / "hostile"
    try:
        assert report_command([f"study.name={name}", f"storage.url={study_run['url']}", f"out={out}"]) == 0
    finally:  # other tests list the studies in this storage
        optuna.delete_study(study_name=name, storage=study_run["url"])
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    for text in (html, md):
        assert "<script" not in text and "<img" not in text
        assert "&lt;script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    for svg in (out / "plots").iterdir():
        assert "<img" not in svg.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["study.name=nope"], "study.name: got 'nope' but"),
        (["study.name=x", "storage.url=sqlite:///{tmp}/absent.db"], "does not exist"),
        (["study.name=x", "storage.url={tmp}/absent.journal"], "does not exist"),
        (["study.name=x", "colour=red"], "argument 'colour=red': allowed: study.name=<study name>"),
    ],
)
def test_report_command_refuses_bad_input_and_writes_nothing(
    study_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
):
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("storage.url=") for a in args):
        args.append(f"storage.url={study_run['url']}")
    assert report_command([*args, f"out={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvopt: error: ") and message in err
    assert list(tmp_path.iterdir()) == []  # no report folder, no new storage file


@pytest.mark.slow
def test_python_m_kvopt_report_exits_2_without_a_traceback(study_run: dict, tmp_path: Path):
    proc = run_kvopt(
        "report", "study.name=nope", f"storage.url={study_run['url']}", f"out={tmp_path / 'out'}", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"kvopt: error: study.name: got 'nope' but {study_run['url']} has no such study; studies there: '{STUDY}'\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["port=http"], "port: got 'http'; allowed: an integer from 1 to 65535"),
        (["port=70000"], "port: got '70000'"),
        (["storage.url=sqlite:///{tmp}/absent.db"], "does not exist"),
        (["host=0.0.0.0"], "argument 'host=0.0.0.0': allowed: storage.url=<storage URL>, port=<port number>"),
    ],
)
def test_dashboard_command_refuses_bad_input_before_serving(
    study_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
):
    args = [a.format(tmp=tmp_path) for a in args]
    if not any(a.startswith("storage.url=") for a in args):
        args.append(f"storage.url={study_run['url']}")
    assert dashboard_command(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvopt: error: ") and message in err
    assert list(tmp_path.iterdir()) == []
