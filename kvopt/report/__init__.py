"""Outputs: the terminal view and the results file."""

from kvopt.report.results import trial_records, write_json
from kvopt.report.terminal import StudyProgress, format_gains, paste_snippet, print_plan, print_summary

__all__ = [
    "trial_records",
    "write_json",
    "StudyProgress",
    "format_gains",
    "paste_snippet",
    "print_plan",
    "print_summary",
]
