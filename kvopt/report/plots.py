"""Plots as inline SVG, drawn by our own code: the report opens offline, with no scripts.

Every data mark carries ``class="mark"``, its trial number (``data-trial``) and a
``<title>`` tooltip, so a reader (and the browser test) can find the data in the DOM.
Every piece of text that comes from the study is escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from kvopt.metrics import OBJECTIVES
from kvopt.select import Result

__all__ = ["METRIC_LABELS", "pareto_svg", "parallel_svg", "importance_svg", "nice_ticks", "colour"]

METRIC_LABELS = {m.name: m.axis_label for m in OBJECTIVES}
_LOWER_IS_BETTER = {m.name: not m.higher_is_better for m in OBJECTIVES}
# Perceptually ordered anchors (dark = low), interpolated in RGB.
_RAMP = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_FONT = 'font-family="sans-serif" font-size="12"'


def colour(t: float) -> str:
    """A colour on the ramp for ``t`` in [0, 1]."""
    t = min(1.0, max(0.0, t)) * (len(_RAMP) - 1)
    i = min(int(t), len(_RAMP) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_RAMP[i], _RAMP[i + 1]))
    return f"#{r:02x}{g:02x}{b:02x}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


@dataclass(frozen=True)
class _Axis:
    """Maps data values on [ticks[0], ticks[-1]] to pixels on [start, end]."""

    ticks: list[float]
    start: float
    end: float

    def __call__(self, value: float) -> float:
        low, high = self.ticks[0], self.ticks[-1]
        return self.start + (value - low) / ((high - low) or 1.0) * (self.end - self.start)


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}">\n' + "\n".join(body) + "\n</svg>\n"
    )


def _tooltip(r: Result) -> str:
    v = r.values
    return escape(
        f"#{r.number} {r.label}: TTFT {v['ttft_ms']:.2f} ms, decode {v['decode_tok_s']:.1f} tok/s, "
        f"memory {v['peak_mem_mb']:.2f} MB"
    )


def pareto_svg(results: list[Result], front: list[Result], recommended: int | None) -> str:
    """TTFT (x) against decode throughput (y), coloured by peak memory.

    Front members are large with a dark outline, dominated candidates small and faded;
    the baseline is a square, the recommendation has a ring around it. ``results`` must
    not be empty.
    """
    width, height, left, right, top, bottom = 640, 440, 70, 120, 20, 70
    xs = [r.values["ttft_ms"] for r in results]
    ys = [r.values["decode_tok_s"] for r in results]
    mems = [r.values["peak_mem_mb"] for r in results]
    x = _Axis(nice_ticks(min(xs), max(xs)), left, width - right)
    y = _Axis(nice_ticks(min(ys), max(ys)), height - bottom, top)
    m_low, m_high = min(mems), max(mems)
    on_front = {r.number for r in front}
    body = _frame(x, y, "TTFT (ms, lower is better)", "decode tok/s (higher is better)", width, height)
    # Dominated first, so front members are drawn on top.
    for r in sorted(results, key=lambda r: r.number in on_front):
        cx, cy = x(r.values["ttft_ms"]), y(r.values["decode_tok_s"])
        fill = colour((r.values["peak_mem_mb"] - m_low) / ((m_high - m_low) or 1.0))
        front_attrs = 'stroke="#111" stroke-width="1.5"' if r.number in on_front else 'opacity="0.55"'
        size = 7 if r.number in on_front else 4.5
        kind = "front" if r.number in on_front else "dominated"
        tip = f"<title>{_tooltip(r)}</title>"
        if r.is_baseline:
            body.append(
                f'<rect class="mark {kind} baseline" data-trial="{r.number}" x="{cx - size:.1f}" '
                f'y="{cy - size:.1f}" width="{2 * size:.1f}" height="{2 * size:.1f}" fill="{fill}" '
                f"{front_attrs}>{tip}</rect>"
            )
        else:
            body.append(
                f'<circle class="mark {kind}" data-trial="{r.number}" cx="{cx:.1f}" cy="{cy:.1f}" r="{size}" '
                f'fill="{fill}" {front_attrs}>{tip}</circle>'
            )
        if r.number == recommended:
            body.append(
                f'<circle class="recommended" cx="{cx:.1f}" cy="{cy:.1f}" r="{size + 5}" fill="none" '
                f'stroke="#d62728" stroke-width="2.5"><title>recommended: {_tooltip(r)}</title></circle>'
            )
    body += _colour_bar(width - right + 30, top, height - bottom - top, m_low, m_high)
    body.append(
        f'<text x="{left}" y="{height - 8}" {_FONT} fill="#444">large, outlined: Pareto front; '
        "square: baseline; red ring: recommendation</text>"
    )
    return _svg(width, height, "Pareto front: TTFT against decode throughput, coloured by memory", body)


def _frame(x: _Axis, y: _Axis, x_label: str, y_label: str, width: int, height: int) -> list[str]:
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for t in x.ticks:
        px = x(t)
        body.append(f'<line x1="{px:.1f}" y1="{y.start}" x2="{px:.1f}" y2="{y.end}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{px:.1f}" y="{y.start + 16}" text-anchor="middle" {_FONT}>{_fmt(t)}</text>')
    for t in y.ticks:
        py = y(t)
        body.append(f'<line x1="{x.start}" y1="{py:.1f}" x2="{x.end}" y2="{py:.1f}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{x.start - 6}" y="{py + 4:.1f}" text-anchor="end" {_FONT}>{_fmt(t)}</text>')
    body.append(
        f'<rect x="{x.start}" y="{y.end}" width="{x.end - x.start}" height="{y.start - y.end}" '
        'fill="none" stroke="#888"/>'
    )
    centre = (x.start + x.end) / 2
    body.append(f'<text x="{centre:.1f}" y="{y.start + 34}" text-anchor="middle" {_FONT}>{x_label}</text>')
    mid = (y.start + y.end) / 2
    body.append(
        f'<text x="16" y="{mid:.1f}" transform="rotate(-90 16 {mid:.1f})" text-anchor="middle" {_FONT}>{y_label}</text>'
    )
    return body


def _colour_bar(x0: float, top: float, height: float, low: float, high: float) -> list[str]:
    steps = 24
    body = [f'<text x="{x0}" y="{top + 10}" {_FONT}>memory MB</text>']
    for i in range(steps):
        # Top of the bar is the highest memory.
        body.append(
            f'<rect x="{x0}" y="{top + 18 + i * (height - 30) / steps:.1f}" width="14" '
            f'height="{(height - 30) / steps + 0.5:.1f}" fill="{colour(1 - i / (steps - 1))}"/>'
        )
    body.append(f'<text x="{x0 + 20}" y="{top + 28}" {_FONT}>{_fmt(high)}</text>')
    body.append(f'<text x="{x0 + 20}" y="{top + height - 12:.1f}" {_FONT}>{_fmt(low)}</text>')
    return body


def parallel_svg(results: list[Result], front: list[Result], recommended: int | None) -> str:
    """All three objectives at once: one line per candidate across three axes, better at the top.

    ``results`` must not be empty.
    """
    width, height, top, bottom = 640, 360, 40, 50
    metrics = list(METRIC_LABELS)
    xs = [110 + i * (width - 220) / (len(metrics) - 1) for i in range(len(metrics))]
    axes = {}
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for m, px in zip(metrics, xs):
        ticks = nice_ticks(min(r.values[m] for r in results), max(r.values[m] for r in results))
        # Lower-is-better metrics run downwards, so "better" is always up.
        axis = _Axis(ticks, top, height - bottom) if _LOWER_IS_BETTER[m] else _Axis(ticks, height - bottom, top)
        axes[m] = axis
        body.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{height - bottom}" stroke="#555"/>')
        for t in ticks:
            body.append(f'<text x="{px - 6:.1f}" y="{axis(t) + 4:.1f}" text-anchor="end" {_FONT}>{_fmt(t)}</text>')
        body.append(f'<text x="{px:.1f}" y="{top - 14}" text-anchor="middle" {_FONT}>{METRIC_LABELS[m]}</text>')
    on_front = {r.number for r in front}
    for r in sorted(results, key=lambda r: (r.number in on_front, r.number == recommended)):
        points = " ".join(f"{px:.1f},{axes[m](r.values[m]):.1f}" for m, px in zip(metrics, xs))
        if r.number == recommended:
            style, kind = 'stroke="#d62728" stroke-width="3"', "front recommended"
        elif r.number in on_front:
            style, kind = 'stroke="#1f77b4" stroke-width="2"', "front"
        else:
            style, kind = 'stroke="#999" stroke-width="1" opacity="0.6"', "dominated"
        dash = ' stroke-dasharray="6 3"' if r.is_baseline else ""
        body.append(
            f'<polyline class="mark {kind}" data-trial="{r.number}" points="{points}" fill="none" {style}{dash}>'
            f"<title>{_tooltip(r)}</title></polyline>"
        )
    body.append(
        f'<text x="20" y="{height - 12}" {_FONT} fill="#444">up is better on every axis; red: recommendation; '
        "blue: Pareto front; grey: dominated; dashed: baseline</text>"
    )
    return _svg(width, height, "All three objectives: parallel coordinates", body)


def importance_svg(importances: dict[str, dict[str, float]]) -> str:
    """Horizontal bars: each parameter's importance for each objective (0 to 1)."""
    params = sorted({p for values in importances.values() for p in values})
    metrics = list(importances)
    bar, gap, left, width = 12, 10, 170, 640
    height = 40 + len(params) * (len(metrics) * bar + gap) + 30
    x = _Axis([0.0, 0.25, 0.5, 0.75, 1.0], left, width - 30)
    body = [f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for t in x.ticks:
        body.append(f'<line x1="{x(t):.1f}" y1="30" x2="{x(t):.1f}" y2="{height - 30}" stroke="#e5e5e5"/>')
        body.append(f'<text x="{x(t):.1f}" y="{height - 14}" text-anchor="middle" {_FONT}>{t:g}</text>')
    for i, m in enumerate(metrics):
        body.append(
            f'<rect x="{left + i * 160}" y="8" width="12" height="12" fill="{colour(i / max(len(metrics) - 1, 1))}"/>'
            f'<text x="{left + i * 160 + 18}" y="18" {_FONT}>{escape(METRIC_LABELS.get(m, m))}</text>'
        )
    y0 = 34.0
    for p in params:
        label_y = y0 + len(metrics) * bar / 2 + 4
        body.append(f'<text x="{left - 8}" y="{label_y:.1f}" text-anchor="end" {_FONT}>{escape(p)}</text>')
        for i, m in enumerate(metrics):
            value = importances[m].get(p, 0.0)
            body.append(
                f'<rect class="mark" data-param="{escape(p)}" data-metric="{escape(m)}" x="{left}" '
                f'y="{y0 + i * bar:.1f}" width="{max(x(value) - left, 0.5):.1f}" height="{bar - 2}" '
                f'fill="{colour(i / max(len(metrics) - 1, 1))}">'
                f"<title>{escape(p)}: {value:.2f} for {escape(m)}</title></rect>"
            )
        y0 += len(metrics) * bar + gap
    return _svg(width, height, "Parameter importance per objective", body)
