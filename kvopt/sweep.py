"""Hydra callback: mask database passwords in Hydra's files, summarise a multirun sweep.

Configured under ``hydra.callbacks`` in ``conf/config.yaml``, so it runs with every
launcher (basic, joblib, submitit): ``on_job_start`` in the job's process,
``on_multirun_end`` on the machine that started the sweep, after every job returned.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kvopt.compose import model_name
from kvopt.storage import mask_urls

__all__ = ["KvoptCallback", "SUMMARY_COLUMNS", "summarize_sweep", "mask_log_records", "scrub_file"]

SUMMARY_COLUMNS = (
    "job",
    "model",
    "profile",
    "worker",
    "study",
    "recommendation",
    "ttft_gain_pct",
    "decode_gain_pct",
    "mem_gain_pct",
    "confirmed",
    "trials",
    "study_trials",
    "wall_s",
    "results",
)
_log = logging.getLogger(__name__)


def mask_log_records() -> None:
    """Mask URL passwords in every log record this process makes, whatever its handlers.

    Hydra's launchers log each job's overrides (``storage.url=postgresql://u:pw@…``) and
    reconfigure logging handlers as they go, so the mask sits in the record factory.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_kvopt_masks", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        message = record.getMessage()
        masked = mask_urls(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    factory._kvopt_masks = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def scrub_file(path: Path) -> None:
    """Rewrite a file with URL passwords masked (Hydra saves overrides as given)."""
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        masked = mask_urls(text)
        if masked != text:
            path.write_text(masked, encoding="utf-8")


class KvoptCallback(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): masks passwords, summarises sweeps."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask passwords in this process's log records."""
        mask_log_records()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask passwords in this process's log records."""
        mask_log_records()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask passwords in the job's log records and in the Hydra files saved for it."""
        mask_log_records()
        subdir = config.hydra.output_subdir
        if subdir is not None:
            hydra_dir = Path(config.hydra.runtime.output_dir) / str(subdir)
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                scrub_file(hydra_dir / name)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask passwords in multirun.yaml and print (and write) the sweep summary."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        scrub_file(sweep_dir / "multirun.yaml")
        try:
            md, _ = summarize_sweep(sweep_dir)
        except Exception as exc:  # a summary must never turn a finished sweep into an error
            print(f"kvopt: sweep summary failed: {type(exc).__name__}: {exc}")
            return
        print(md.read_text(encoding="utf-8"))
        print(f"sweep summary: {md} and {md.with_suffix('.csv')}")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]

    def number(p: Path) -> tuple[int, str]:
        head = p.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, p.name)

    return sorted(jobs, key=number)


def _pct(gains: dict[str, Any] | None, key: str) -> str:
    value = (gains or {}).get(key)
    return "" if value is None else f"{float(value):+.1f}"


def _row(job: Path) -> dict[str, Any]:
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    row: dict[str, Any] = {c: "" for c in SUMMARY_COLUMNS}
    row.update(
        job=job.name,
        model=model_name(  # the model the user gave, as the study and its folder are named
            str(OmegaConf.select(cfg, "model.name", default="")),
            str(OmegaConf.select(cfg, "model.hub_id", default="")),
            OmegaConf.select(cfg, "model.gguf", default=None),
        ),
        profile=OmegaConf.select(cfg, "profile.name", default=""),
        worker=OmegaConf.select(cfg, "worker", default=0, throw_on_resolution_failure=False),
    )
    results = job / "results.json"
    if not results.is_file():
        row["recommendation"] = f"(no results: see {job / 'kvopt.log'})"
        return row
    data = json.loads(results.read_text(encoding="utf-8"))
    rec = data.get("recommendation") or {}
    row.update(
        worker=data.get("worker", row["worker"]),
        study=data.get("study_name", ""),
        recommendation=rec.get("candidate", "(none)"),
        ttft_gain_pct=_pct(rec.get("gains_pct"), "ttft_ms"),
        decode_gain_pct=_pct(rec.get("gains_pct"), "decode_tok_s"),
        mem_gain_pct=_pct(rec.get("gains_pct"), "peak_mem_mb"),
        confirmed="yes" if rec.get("confirmed_rounds") else "no",
        trials=data.get("trials_this_run", ""),
        study_trials=len(data.get("trials", [])),
        wall_s="" if data.get("wall_s") is None else f"{data['wall_s']:.1f}",
        results=str(results.relative_to(job.parent)),
    )
    row["_finished"] = data.get("finished_at", "")
    return row


def summarize_sweep(sweep_dir: Path) -> tuple[Path, Path]:
    """Write ``sweep_summary.md`` and ``sweep_summary.csv`` (one row per job) in the sweep folder."""
    rows = [_row(job) for job in _job_dirs(sweep_dir)]
    csv_path = sweep_dir / "sweep_summary.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# kvopt sweep: {sweep_dir}",
        "",
        "Gains are over the study's baseline, in percent, positive = better.",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    # Workers sharing a study: the one that finished last saw every trial of the others.
    studies: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["study"]:
            studies.setdefault(r["study"], []).append(r)
    shared = {name: rs for name, rs in studies.items() if len(rs) > 1}
    if shared:
        lines += ["", "## Studies shared by several workers", ""]
        for name, rs in shared.items():
            last = max(rs, key=lambda r: r["_finished"])
            lines.append(
                f"- {name}: {len(rs)} jobs, {sum(int(r['trials'] or 0) for r in rs)} trials run, "
                f"{last['study_trials']} in the study; final recommendation "
                f"{last['recommendation']} (job {last['job']}, the last to finish)"
            )
    md_path = sweep_dir / "sweep_summary.md"
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md_path, csv_path
