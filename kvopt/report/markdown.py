"""report.md and the dashboard's study note, from :mod:`kvopt.report.content`.

Every string from the study is escaped: HTML special characters become entities (a
Markdown viewer would otherwise render them) and Markdown punctuation is backslashed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kvopt.metrics import OBJECTIVES
from kvopt.report import content
from kvopt.report.shapes import SHAPE_HEADER

if TYPE_CHECKING:
    from kvopt.stored import StoredStudy

__all__ = ["md_escape", "md_table", "render_markdown", "study_note", "PLOT_TITLES"]

# Plot file stem -> caption; the same plots, in this order, in report.html.
PLOT_TITLES = {
    "pareto": "TTFT against decode throughput, coloured by peak memory",
    "objectives": "All three objectives (parallel coordinates; up is better)",
    "importance": "Parameter importance per objective",
}

_VALUE_HEADERS = tuple(m.header for m in OBJECTIVES)  # "TTFT ms", "decode tok/s", "memory MB"
FRONT_HEADER = ("#", "candidate", *_VALUE_HEADERS, "quality", "")
TRIAL_HEADER = ("#", "state", "candidate", *_VALUE_HEADERS, "runs", "seconds", "notes")
CONFIRM_HEADER = ("#", "candidate", *(m.label for m in OBJECTIVES), "")


def md_escape(text: str) -> str:
    """``text`` safe in a Markdown table cell: HTML entities, backslashed punctuation, one line."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*_\[\]|#!{}])", r"\\\1", text)
    return " ".join(text.splitlines())


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, every cell escaped."""
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str, language: str = "python") -> str:
    # A fence longer than any run of backticks inside, so the text cannot close it.
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _recommendation(s: StoredStudy) -> list[str]:
    rec = s.recommendation
    if rec is None:
        return ["No candidate completed a measurement: nothing to recommend.", ""]
    out = [f"**{md_escape(rec.result.label)}** (trial #{rec.result.number})", ""]
    quality = content.quality_note(s)
    if quality:
        out += [md_escape(quality), ""]
    out += [md_escape(content.gains_heading(s)) + ":", ""]
    rows = content.gain_rows(s)
    if rows:
        out += [md_table(("objective", "gain", "confidence interval"), rows), ""]
    if not rec.meets_slo:
        out += ["**No measured candidate meets the profile's SLOs.**", ""]
    if rec.note:
        out += [f"Note: {md_escape(rec.note)}", ""]
    snippet = content.settings_snippet(s)
    if snippet:
        out += ["Settings to paste:", "", _code(snippet), ""]
    return out


def render_markdown(s: StoredStudy, importance: content.Importance, plots: dict[str, str]) -> str:
    """The whole report; ``plots`` maps plot names to their paths relative to report.md."""
    out = [f"# kvopt report: {md_escape(s.name)}", "", md_table(("", ""), content.facts(s)), ""]
    out += ["## Recommendation", "", *_recommendation(s)]
    confirmed = content.confirmation_rows(s)
    if confirmed:
        out += ["### Confirmed finalists (gain over the baseline, paired rounds)", ""]
        out += [md_table(CONFIRM_HEADER, confirmed), ""]
    shapes = content.shape_rows(s)
    if shapes:
        out += ["### Per request shape (the recommendation's confirmed gain over the baseline)", ""]
        out += [md_table(SHAPE_HEADER, shapes), ""]
    out += ["## Pareto front", ""]
    for name in ("pareto", "objectives"):
        if name in plots:
            out += [f"![{PLOT_TITLES[name]}]({plots[name]})", ""]
    out += [md_table(FRONT_HEADER, content.front_rows(s)) if s.front else "No measured candidate.", ""]
    out += ["## Parameter importance", "", md_escape(importance.message), ""]
    if importance.values:
        if "importance" in plots:
            out += [f"![{PLOT_TITLES['importance']}]({plots['importance']})", ""]
        params = sorted({p for v in importance.values.values() for p in v})
        rows = [(p, *(f"{importance.values[m].get(p, 0.0):.2f}" for m in importance.values)) for p in params]
        out += [md_table(("parameter", *importance.values), rows), ""]
    noise = content.noise_rows(s)
    out += ["## Noise flags", ""]
    out += [md_table(("#", "candidate", "why"), noise) if noise else "No trial was flagged noisy.", ""]
    out += ["## Every trial", "", md_table(TRIAL_HEADER, content.trial_rows(s)), ""]
    return "\n".join(out)


def study_note(s: StoredStudy, files: Sequence[str]) -> str:
    """A short summary for optuna-dashboard's study note; the full report is an artifact."""
    out = [f"## kvopt: {md_escape(s.name)}", "", *_recommendation(s)]
    front = md_table(FRONT_HEADER, content.front_rows(s)) if s.front else "No measured candidate."
    out += ["### Pareto front", "", front, ""]
    if files:
        names = ", ".join(md_escape(f) for f in files)
        out += [f"Full report and plots: see this study's artifacts ({names}).", ""]
    return "\n".join(out)
