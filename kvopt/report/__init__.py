"""Outputs: the terminal view, the results file, the report (md + offline html) and the dashboard."""

from kvopt.report.content import Importance, parameter_importance
from kvopt.report.dashboard import artifact_dir, publish_report, publish_study
from kvopt.report.files import ReportFiles, write_report
from kvopt.report.html import render_html
from kvopt.report.markdown import render_markdown, study_note
from kvopt.report.terminal import StudyProgress, format_gains, print_plan, print_summary

__all__ = [
    "StudyProgress",
    "format_gains",
    "print_plan",
    "print_summary",
    "Importance",
    "parameter_importance",
    "ReportFiles",
    "write_report",
    "render_markdown",
    "render_html",
    "study_note",
    "artifact_dir",
    "publish_report",
    "publish_study",
]
