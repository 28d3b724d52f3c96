"""What the user sees in the terminal: the plan, live progress, the front and the decision."""

from __future__ import annotations

import os
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from kvopt.attrs import QUALITY_ATTR
from kvopt.metrics import OBJECTIVES
from kvopt.quality import quality_label
from kvopt.report.shapes import SHAPE_HEADER, confirmed_shape_rows
from kvopt.select import Recommendation, Result

__all__ = [
    "PIPED_WIDTH",
    "command_console",
    "StudyProgress",
    "print_plan",
    "print_summary",
    "print_confirmation",
    "format_gains",
]

_GAIN_LABELS = {m.name: m.label for m in OBJECTIVES}

# Columns of a study's output that is not a terminal (a piped or redirected log). rich would use
# 80 there and wrap the tables; they size to their content, so this only bounds the widest
# (the per-shape table with the longest labels fits well inside it).
PIPED_WIDTH = 200


def command_console() -> Console:
    """The console a study prints to: a terminal's own width; a piped log ``PIPED_WIDTH`` columns.

    Long lines soft-wrap on a terminal, not mid-path. A ``COLUMNS`` variable set by the user
    still decides the width, and a notebook keeps rich's own.
    """
    console = Console(soft_wrap=True)
    if console.is_terminal or console.is_jupyter or os.environ.get("COLUMNS"):
        return console
    return Console(soft_wrap=True, width=PIPED_WIDTH)


# Dropped single candidates (not whole choices) listed in the plan; the rest are counted.
_PLAN_DROPPED_CANDIDATES = 12


def print_plan(console: Console, lines: list[tuple[str, str]], dropped: dict[str, str]) -> None:
    """Print what the run will do, one ``key value`` line each, then each choice dropped here and why.

    ``dropped`` keys are whole choices (``param=value``) or single candidates (labels); past
    the first few candidates the rest are counted, not listed (the study's attrs hold them all).
    """
    for key, value in lines:
        console.print(f"[bold]{key:<13}[/bold] {value}", highlight=False)
    singles = [k for k in dropped if "=" not in k]
    hidden = set(singles[_PLAN_DROPPED_CANDIDATES:])
    for choice, reason in dropped.items():
        if choice not in hidden:
            console.print(f"[yellow]dropped[/yellow]       {choice}: {reason}", highlight=False)
    if hidden:
        console.print(
            f"[yellow]dropped[/yellow]       {len(hidden)} more candidates "
            "(the study's dropped_choices attr lists each)",
            highlight=False,
        )


class StudyProgress:
    """A progress bar: trial count, elapsed and estimated remaining time, the best result so far."""

    def __init__(self, console: Console, total: int, timeout: float | None) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]trials"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),  # estimated from the trials done so far
            TextColumn("{task.fields[best]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("trials", total=total, best="")

    def __enter__(self) -> StudyProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        """Print a line above the progress bar."""
        self.progress.console.print(message, highlight=False)

    def advance(self, best: str) -> None:
        """Count one finished trial and show the best candidate so far (and the time left)."""
        left = ""
        if self.timeout is not None:
            remaining = max(0.0, self.timeout - (time.monotonic() - self.started))
            left = f"  {remaining:.0f}s left"
        self.progress.update(self.task, advance=1, best=f"best: {best}{left}")


def format_gains(gains: dict[str, float], cis: dict[str, dict[str, Any]] | None = None) -> str:
    """``TTFT +12.0% [+8.1, +15.2], decode ...``: gains in percent with their CIs where confirmed."""
    parts = []
    for m, g in gains.items():
        ci = (cis or {}).get(m) or {}
        if ci.get("ci_low") is not None:
            parts.append(f"{_GAIN_LABELS[m]} {g:+.1f}% [{ci['ci_low']:+.1f}, {ci['ci_high']:+.1f}]")
        else:
            parts.append(f"{_GAIN_LABELS[m]} {g:+.1f}%")
    return ", ".join(parts)


def _ci_cell(gain: Any) -> str:
    if gain.low is None:
        return f"{gain.pct:+.0f}%"
    return f"{gain.pct:+.0f}% [{gain.low:+.0f},{gain.high:+.0f}]"


def _candidate_table(title: str, value_headers: tuple[str, ...]) -> Table:
    """A compact table of candidates: number, label, then right-aligned figures."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("candidate", no_wrap=True)
    for header in value_headers:
        table.add_column(header, justify="right", no_wrap=True)
    return table


def print_confirmation(console: Console, confirmation: Any) -> None:
    """Confirmed gains of every finalist over the baseline, with their CIs."""
    coverage = min(
        (g.coverage for gains in confirmation.gains.values() for g in gains.values() if g.coverage),
        default=0.0,
    )
    verdict = "confirmed" if confirmation.confirmed else "not confirmed"
    table = _candidate_table(
        f"{verdict}: {confirmation.rounds} paired interleaved rounds (gain vs baseline, {coverage:.0%} CI)",
        tuple(m.label for m in OBJECTIVES),
    )
    for r in confirmation.finalists:
        if r.is_baseline:
            continue
        g = confirmation.gains[r.number]
        style = "bold green" if r.number == confirmation.recommended.number else None
        table.add_row(
            str(r.number),
            r.label,
            _ci_cell(g["ttft_ms"]),
            _ci_cell(g["decode_tok_s"]),
            _ci_cell(g["peak_mem_mb"]),
            style=style,
        )
    console.print(table)
    rows = confirmed_shape_rows(confirmation.to_dict(), {r.number: r.label for r in confirmation.finalists})
    if rows:
        shapes = Table(
            title="per request shape: the recommendation's confirmed gain over the baseline",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for header in SHAPE_HEADER:
            shapes.add_column(header)
        for row in rows:
            shapes.add_row(*row)
        console.print(shapes)
    labels = {r.number: f"#{r.number} {r.label}" for r in confirmation.finalists}
    if len(confirmation.tie_set) > 1:
        console.print("tie set: " + ", ".join(labels[n] for n in confirmation.tie_set), highlight=False)
    for check in confirmation.window_checks:
        console.print(
            f"decode window vs full-length call, {labels[check['trial']]} at {check['shape']}: "
            f"{check['window_tok_s']:.1f} vs {check['full_length_tok_s']:.1f} tok/s ({check['deviation_pct']:+.1f}%)"
            + (": the full-length figure counts" if check["full_length_counts"] else ""),
            highlight=False,
        )


def _values_row(r: Result) -> list[str]:
    return [
        f"{r.values['ttft_ms']:.1f}",
        f"{r.values['decode_tok_s']:.1f}",
        f"{r.values['peak_mem_mb']:.1f}",
    ]


def print_summary(
    console: Console,
    front: list[Result],
    baseline: Result | None,
    recommendation: Recommendation | None,
    counts: dict[str, int],
    snippet: str | None,
) -> None:
    """Print the trial counts, the Pareto front (with the baseline), the recommendation, its gains and settings."""
    console.print(
        "trials: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n),
        highlight=False,
    )
    if not front:
        console.print("[red]no candidate completed a measurement[/red]")
        return
    table = _candidate_table(
        "Pareto front (TTFT min, decode tok/s max, memory min)", tuple(m.column for m in OBJECTIVES)
    )
    table.add_column("", justify="left", no_wrap=True)
    rec_number = recommendation.result.number if recommendation else None
    shown = list(front)
    if baseline is not None and baseline not in shown:
        shown.append(baseline)
    for r in shown:
        is_rec = r.number == rec_number
        mark = "recommended" if is_rec else ""
        if r.is_baseline:
            mark = "rec. = baseline" if is_rec else "baseline" if r in front else "baseline (dominated)"
        style = "bold green" if r.number == rec_number else None
        table.add_row(str(r.number), r.label, *_values_row(r), mark, style=style)
    console.print(table)
    # What each point costs in fidelity, below the table so a narrow terminal keeps the figures whole.
    labels = [f"#{r.number} {label}" for r in shown if (label := quality_label(r.user_attrs))]
    if labels:
        console.print("quality vs baseline: " + "; ".join(labels), highlight=False)
    if recommendation is None:
        return
    rec = recommendation.result
    console.print(f"[bold green]recommended[/bold green]: {rec.label} (trial #{rec.number})", highlight=False)
    decision = rec.user_attrs.get(QUALITY_ATTR)
    if decision:
        console.print(f"quality: {decision['note']}", highlight=False)
    if recommendation.gains_pct is not None:
        how = "from the study, unconfirmed"
        if recommendation.confirmed_rounds:
            coverage = min(
                (c["ci_coverage"] for c in (recommendation.gains_ci or {}).values() if c["ci_coverage"]),
                default=0.0,
            )
            how = f"confirmed: median [{coverage:.0%} CI] of {recommendation.confirmed_rounds} paired rounds"
        console.print(
            f"gain over baseline ({how}; positive = better): "
            + format_gains(recommendation.gains_pct, recommendation.gains_ci),
            highlight=False,
        )
    if recommendation.note:
        console.print(f"[yellow]note[/yellow]: {recommendation.note}", highlight=False)
    if snippet:
        console.print("settings:", highlight=False)
        console.print(snippet, highlight=False, soft_wrap=True, markup=False)
