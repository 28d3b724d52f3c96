"""report.html: one self-contained file that opens offline.

No scripts, fonts, stylesheets or images are fetched: the plots are inline SVG, the
style is inline, and a Content-Security-Policy forbids anything else. Every string from
the study is passed through :func:`html.escape`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from kvopt.report import content
from kvopt.report.markdown import CONFIRM_HEADER, FRONT_HEADER, PLOT_TITLES, TRIAL_HEADER
from kvopt.report.shapes import SHAPE_HEADER

if TYPE_CHECKING:
    from kvopt.stored import StoredStudy

__all__ = ["render_html", "html_table"]

# Nothing may load from anywhere: no script at all, styles and SVG inline only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.recommended td { background: #eaf7ea; font-weight: bold; }
tr.state-fail td, tr.state-pruned td { color: #8a4b00; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
.note { background: #fff6dd; padding: 0.5em 0.8em; border-left: 4px solid #e0b000; }
"""


def _is_number(cell: str) -> bool:
    return cell.lstrip("+-").replace(".", "", 1).replace(",", "").replace("%", "").isdigit()


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], row_class: Sequence[str] = ()) -> str:
    """An HTML table, every cell escaped, numbers right-aligned; ``row_class`` gives rows a CSS class."""
    out = ["<table>"]
    if any(header):
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>")
    for i, row in enumerate(rows):
        cls = f' class="{escape(row_class[i])}"' if i < len(row_class) and row_class[i] else ""
        cells = "".join(f'<td class="num">{escape(c)}</td>' if _is_number(c) else f"<td>{escape(c)}</td>" for c in row)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(name: str, svg: str) -> str:
    return f'<figure id="plot-{name}">\n{svg}<figcaption>{escape(PLOT_TITLES[name])}</figcaption>\n</figure>'


def _recommendation(s: StoredStudy) -> list[str]:
    rec = s.recommendation
    if rec is None:
        return ["<p>No candidate completed a measurement: nothing to recommend.</p>"]
    out = [
        f"<p><strong>{escape(rec.result.label)}</strong> (trial #{rec.result.number})</p>",
        f"<p>{escape(content.gains_heading(s))}:</p>",
    ]
    quality = content.quality_note(s)
    if quality:
        out.insert(1, f"<p>{escape(quality)}</p>")
    rows = content.gain_rows(s)
    if rows:
        out.append(html_table(("objective", "gain", "confidence interval"), rows))
    if not rec.meets_slo:
        out.append('<p class="note">No measured candidate meets the profile\'s SLOs.</p>')
    if rec.note:
        out.append(f'<p class="note">{escape(rec.note)}</p>')
    snippet = content.settings_snippet(s)
    if snippet:
        out += ["<p>Settings to paste:</p>", f"<pre><code>{escape(snippet)}</code></pre>"]
    return out


def _marked(rows: list[tuple[str, ...]]) -> list[str]:
    return ["recommended" if "recommended" in row[-1] else "" for row in rows]


def render_html(s: StoredStudy, importance: content.Importance, plots: dict[str, str]) -> str:
    """The whole report as one HTML page; ``plots`` maps plot names to SVG text."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>kvopt report: {escape(s.name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>kvopt report: {escape(s.name)}</h1>",
        html_table(("", ""), content.facts(s)),
        "<h2>Recommendation</h2>",
        *_recommendation(s),
    ]
    confirmed = content.confirmation_rows(s)
    if confirmed:
        out += [
            "<h3>Confirmed finalists (gain over the baseline, paired rounds)</h3>",
            html_table(CONFIRM_HEADER, confirmed, _marked(confirmed)),
        ]
    shapes = content.shape_rows(s)
    if shapes:
        out += [
            "<h3>Per request shape (the recommendation's confirmed gain over the baseline)</h3>",
            html_table(SHAPE_HEADER, shapes),
        ]
    out.append("<h2>Pareto front</h2>")
    out += [_figure(name, plots[name]) for name in ("pareto", "objectives") if name in plots]
    front = content.front_rows(s)
    out.append(html_table(FRONT_HEADER, front, _marked(front)) if front else "<p>No measured candidate.</p>")
    out += ["<h2>Parameter importance</h2>", f"<p>{escape(importance.message)}</p>"]
    if importance.values and "importance" in plots:
        out.append(_figure("importance", plots["importance"]))
    noise = content.noise_rows(s)
    out.append("<h2>Noise flags</h2>")
    out.append(html_table(("#", "candidate", "why"), noise) if noise else "<p>No trial was flagged noisy.</p>")
    trials = content.trial_rows(s)
    out += [
        "<h2>Every trial</h2>",
        html_table(TRIAL_HEADER, trials, [f"state-{row[1]}" for row in trials]),
        "</body></html>",
    ]
    return "\n".join(out) + "\n"
