"""Two stored studies side by side (``python -m kvopt compare A B``, :mod:`kvopt.commands.compare`).

Two GPUs, two library versions or two models: the candidates both studies measured (same
params) with the ratio B/A of every metric, the candidates only one measured, and the two
recommendations. A and B are ``STUDY`` (in ``storage.url``, default ``sqlite:///kvopt.db``)
or ``STUDY@STORAGE_URL`` (e.g. ``gpt2-rag-cuda@sqlite:///h100.db``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from kvopt.metrics import METRICS, OBJECTIVES
from kvopt.report.terminal import format_gains
from kvopt.select import Recommendation, Result
from kvopt.space import candidate_key
from kvopt.stored import StoredStudy, parse_source

# parse_source is the run record's (kvopt.stored); named here too, where notebooks import it.
__all__ = ["Comparison", "compare_studies", "print_comparison", "parse_source"]

_HEADERS = {m.name: m.column for m in OBJECTIVES}


def _key(r: Result) -> tuple[tuple[str, Any], ...]:
    return candidate_key(r.params)


@dataclass
class Comparison:
    """Two stored studies matched candidate by candidate (same params), and what only one measured."""

    a: StoredStudy
    b: StoredStudy
    matched: list[tuple[Result, Result]]  # same params in both, in A's TTFT order
    only_a: list[Result]
    only_b: list[Result]

    @staticmethod
    def ratios(pair: tuple[Result, Result]) -> dict[str, float]:
        """B/A per metric (TTFT and memory: below 1 is better for B; tok/s: above 1)."""
        a, b = pair
        return {m: b.values[m] / a.values[m] if a.values[m] else float("nan") for m in METRICS}

    def rows(self) -> list[dict[str, Any]]:
        """One plain row per matched candidate: values in A and B and the ratios (for notebooks)."""
        out = []
        for pair in self.matched:
            a, b = pair
            row: dict[str, Any] = {"candidate": a.label, "trial_a": a.number, "trial_b": b.number}
            for m, ratio in self.ratios(pair).items():
                row |= {f"{m}_a": a.values[m], f"{m}_b": b.values[m], f"{m}_ratio": ratio}
            out.append(row)
        return out


def compare_studies(a: StoredStudy, b: StoredStudy) -> Comparison:
    """Match the candidates both studies measured; list the rest by side."""
    in_b = {_key(r): r for r in b.results}
    in_a = {_key(r) for r in a.results}
    matched = [(r, in_b[_key(r)]) for r in sorted(a.results, key=lambda r: r.values["ttft_ms"]) if _key(r) in in_b]
    return Comparison(
        a=a,
        b=b,
        matched=matched,
        only_a=[r for r in a.results if _key(r) not in in_b],
        only_b=[r for r in b.results if _key(r) not in in_a],
    )


def _device(s: StoredStudy) -> str:
    machine = s.attrs.get("machine") or {}
    gpus = machine.get("gpus") or []
    where = gpus[0]["name"] if gpus and str(machine.get("device", "")).startswith("cuda") else machine.get("cpu")
    return f"{machine.get('device', '?')} ({where})" if where else str(machine.get("device", "?"))


def _facts(c: Comparison) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("A", overflow="fold")
    table.add_column("B", overflow="fold")
    versions_a = (c.a.attrs.get("machine") or {}).get("versions") or {}
    versions_b = (c.b.attrs.get("machine") or {}).get("versions") or {}
    rows = [
        ("study", c.a.name, c.b.name),
        ("storage", c.a.storage, c.b.storage),
        ("model", c.a.model, c.b.model),
        ("profile", c.a.profile, c.b.profile),
        ("device", _device(c.a), _device(c.b)),
        *[(lib, str(versions_a.get(lib, "?")), str(versions_b.get(lib, "?"))) for lib in ("torch", "transformers")],
        ("measured", f"{len(c.a.results)} candidates", f"{len(c.b.results)} candidates"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def _matched_table(c: Comparison) -> Table:
    table = Table(
        title="measured in both (B/A: TTFT, memory < 1 and tok/s > 1 favour B)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("candidate", no_wrap=True)
    table.add_column("", no_wrap=True)
    for m in METRICS:
        table.add_column(_HEADERS[m], justify="right", no_wrap=True)
    rec_a, rec_b = (s.recommendation.result.number if s.recommendation else None for s in (c.a, c.b))
    for pair in c.matched:
        a, b = pair
        label = a.label + (" (baseline)" if a.is_baseline else "")
        tags = (" rec. A" if a.number == rec_a else "") + (" rec. B" if b.number == rec_b else "")
        table.add_row(label + tags, "A", *(f"{a.values[m]:.1f}" for m in METRICS))
        table.add_row("", "B", *(f"{b.values[m]:.1f}" for m in METRICS))
        table.add_row("", "B/A", *(f"×{v:.2f}" for v in c.ratios(pair).values()), end_section=True)
    return table


def _recommendation_line(name: str, rec: Recommendation | None) -> str:
    if rec is None:
        return f"{name}: no recommendation (no candidate completed a measurement)"
    how = f"confirmed over {rec.confirmed_rounds} rounds" if rec.confirmed_rounds else "unconfirmed"
    gains = format_gains(rec.gains_pct, rec.gains_ci) if rec.gains_pct is not None else "no baseline"
    return f"{name} recommends {rec.result.label} (trial #{rec.result.number}; {how}): {gains}"


def print_comparison(console: Console, c: Comparison) -> None:
    """Print the facts of both studies, the matched candidates with B/A ratios, and both recommendations."""
    console.print(_facts(c))
    if c.matched:
        console.print(_matched_table(c))
    else:
        console.print("no candidate was measured in both studies", highlight=False)
    for name, only in (("A", c.only_a), ("B", c.only_b)):
        if only:
            console.print(f"only in {name}: " + ", ".join(f"#{r.number} {r.label}" for r in only), highlight=False)
    for name, s in (("A", c.a), ("B", c.b)):
        console.print(_recommendation_line(name, s.recommendation), highlight=False)
    if c.a.recommendation and c.b.recommendation:
        same = _key(c.a.recommendation.result) == _key(c.b.recommendation.result)
        console.print("same recommendation in both" if same else "the recommendations differ", highlight=False)
