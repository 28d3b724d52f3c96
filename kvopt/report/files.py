"""Write report.md, report.html and the plots (plots/*.svg) of a stored study into a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kvopt.paths import write_text_atomic
from kvopt.report.content import Importance, parameter_importance
from kvopt.report.html import render_html
from kvopt.report.markdown import render_markdown
from kvopt.report.plots import importance_svg, parallel_svg, pareto_svg

if TYPE_CHECKING:
    from kvopt.stored import StoredStudy

__all__ = ["ReportFiles", "build_plots", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    """The files one report consists of."""

    markdown: Path
    html: Path
    plots: list[Path]

    @property
    def all(self) -> list[Path]:
        """Every file, the HTML report first (the order they are published in)."""
        return [self.html, self.markdown, *self.plots]


def build_plots(s: StoredStudy, importance: Importance) -> dict[str, str]:
    """Plot name -> SVG text: the front, the three objectives, and importance when computed."""
    rec = s.recommendation.result.number if s.recommendation else None
    plots = {}
    if s.results:  # nothing measured: the report says so instead of drawing empty axes
        plots["pareto"] = pareto_svg(s.results, s.front, rec)
        plots["objectives"] = parallel_svg(s.results, s.front, rec)
    if importance.values:
        plots["importance"] = importance_svg(importance.values)
    return plots


def write_report(s: StoredStudy, out_dir: Path) -> ReportFiles:
    """Render everything first, then write: a failure leaves no half-made report behind."""
    importance = parameter_importance(s.study)
    plots = build_plots(s, importance)
    markdown = render_markdown(s, importance, {name: f"plots/{name}.svg" for name in plots})
    html = render_html(s, importance, plots)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    plot_paths = []
    for name, svg in plots.items():
        plot_paths.append(out_dir / "plots" / f"{name}.svg")
        write_text_atomic(plot_paths[-1], svg)
    write_text_atomic(out_dir / "report.md", markdown)
    write_text_atomic(out_dir / "report.html", html)
    return ReportFiles(markdown=out_dir / "report.md", html=out_dir / "report.html", plots=plot_paths)
