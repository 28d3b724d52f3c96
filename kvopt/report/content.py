"""What the report says, as plain rows and strings: one source for report.md, report.html
and the dashboard note, so the three never disagree. Rendering and escaping are theirs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

from kvopt.attrs import CONSTRAINTS_ATTR, NOISY_ATTR, QUALITY_ATTR, REUSED_FROM_ATTR
from kvopt.engines import engine_class
from kvopt.metrics import METRIC_BY_NAME, METRICS, OBJECTIVES
from kvopt.quality import quality_label
from kvopt.report.shapes import confirmed_shape_rows, pct_cell
from kvopt.select import Result

if TYPE_CHECKING:  # kvopt.stored imports kvopt.report: no import cycle at run time
    from kvopt.stored import StoredStudy

__all__ = [
    "GAIN_LABELS",
    "MIN_IMPORTANCE_TRIALS",
    "Importance",
    "facts",
    "gain_rows",
    "gains_heading",
    "confirmation_rows",
    "shape_rows",
    "front_rows",
    "quality_note",
    "trial_rows",
    "noise_rows",
    "settings_snippet",
    "parameter_importance",
]

GAIN_LABELS = {m.name: m.long_label for m in OBJECTIVES}
# PED-ANOVA compares the best trials with all of them: with fewer, "best" is one or two
# noisy points and the importances mean nothing.
MIN_IMPORTANCE_TRIALS = 8


def _cfg(s: StoredStudy, *keys: str) -> Any:
    node: Any = s.attrs.get("config") or {}
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _counts(s: StoredStudy) -> str:
    counts: dict[str, int] = {}
    for t in s.trials:
        counts[t["state"].lower()] = counts.get(t["state"].lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"


def facts(s: StoredStudy) -> list[tuple[str, str]]:
    """Model, profile, machine and versions: what a reader needs to judge the figures."""
    machine = s.attrs.get("machine") or {}
    workload = s.attrs.get("workload") or {}
    weights = _cfg(s, "profile", "weights") or {}
    slo = {k: v for k, v in (_cfg(s, "profile", "slo") or {}).items() if v is not None}
    gpus = ", ".join(f"{g.get('name')} ({g.get('memory_gb')} GB)" for g in machine.get("gpus") or []) or "none"
    space = _cfg(s, "search_space") or {}
    choices = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in space.items() if isinstance(v, list))
    dropped = "; ".join(f"{k} ({why})" for k, why in (s.attrs.get("dropped_choices") or {}).items())
    rows = [
        ("study", s.name),
        ("storage", s.storage),
        ("model", f"{s.model} ({_cfg(s, 'model', 'hub_id')}), {s.attrs.get('weights', '?')} weights"),
        (
            "profile",
            f"{s.profile}: {workload.get('prompt_tokens')} prompt + {workload.get('new_tokens')} new tokens; "
            "weights "
            + ", ".join(f"{m} {w:g}" for m, w in weights.items())
            + ("; SLOs " + ", ".join(f"{k} {v:g}" for k, v in slo.items()) if slo else "; no SLOs"),
        ),
        ("device", str(machine.get("device", "?"))),
        (
            "machine",
            f"{machine.get('cpu', '?')}, {machine.get('cpu_cores_logical', '?')} logical cores, "
            f"{machine.get('memory_gb', '?')} GB memory, {machine.get('torch_threads', '?')} torch threads; "
            f"GPUs: {gpus}",
        ),
        ("versions", ", ".join(f"{k} {v}" for k, v in (machine.get("versions") or {}).items())),
        ("sampler", f"{_cfg(s, 'sampler', 'name')}, seed {_cfg(s, 'seed')}"),
        ("search space", choices or "?"),
        ("trials", _counts(s)),
        ("baseline", s.baseline.label if s.baseline else "not measured"),
    ]
    if dropped:
        rows.insert(-2, ("dropped here", dropped))
    if workload.get("note"):
        rows.append(("workload note", str(workload["note"])))
    return rows


_pct = pct_cell


def gains_heading(s: StoredStudy) -> str:
    """How the recommendation's gain was obtained: confirmed (with CI coverage) or not."""
    rec = s.recommendation
    if rec is None or rec.gains_pct is None:
        return "no gain to show: the baseline was not measured"
    if not rec.confirmed_rounds:
        return "gain over the baseline from the study's own measurements (not confirmed); positive = better"
    coverage = min((cov for c in (rec.gains_ci or {}).values() if (cov := c.get("ci_coverage"))), default=0.0)
    return (
        f"gain over the baseline, confirmed: median of {rec.confirmed_rounds} paired interleaved rounds "
        f"with its {coverage:.0%} confidence interval; positive = better"
    )


def gain_rows(s: StoredStudy) -> list[tuple[str, str, str]]:
    """(objective, gain, confidence interval) for the recommendation."""
    rec = s.recommendation
    if rec is None or rec.gains_pct is None:
        return []
    rows = []
    for m in METRICS:
        ci = (rec.gains_ci or {}).get(m) or {}
        interval = (
            f"[{_pct(ci['ci_low'])}, {_pct(ci['ci_high'])}]"
            if ci.get("ci_low") is not None
            else "exact (measured once, not sampled)"
            if rec.confirmed_rounds
            else "not confirmed"
        )
        rows.append((GAIN_LABELS[m], _pct(rec.gains_pct[m]), interval))
    return rows


def confirmation_rows(s: StoredStudy) -> list[tuple[str, ...]]:
    """Every confirmed finalist's gains with CIs (the recommendation marked)."""
    stored = s.confirmation
    if not stored:
        return []
    by_number = {r.number: r for r in s.results}
    rows = []
    for number in stored["finalists"]:
        r = by_number.get(number)
        if r is None or r.is_baseline:
            continue
        gains = stored["gains"][str(number)]
        cells = []
        for m in METRICS:
            g = gains[m]
            ci = f" [{_pct(g['ci_low'])}, {_pct(g['ci_high'])}]" if g.get("ci_low") is not None else ""
            cells.append(_pct(g["pct"]) + ci)
        mark = "recommended" if number == stored["recommended"] else ""
        rows.append((str(number), r.label, *cells, mark))
    return rows


def shape_rows(s: StoredStudy) -> list[tuple[str, ...]]:
    """Per request shape of the mix: the recommendation's confirmed gains there and the shape's own choice."""
    stored = s.confirmation
    if not stored:
        return []
    return confirmed_shape_rows(stored, {r.number: r.label for r in s.results})


def _values(r: Result) -> tuple[str, str, str]:
    v = r.values
    return (f"{v['ttft_ms']:.2f}", f"{v['decode_tok_s']:.1f}", f"{v['peak_mem_mb']:.2f}")


def front_rows(s: StoredStudy) -> list[tuple[str, ...]]:
    """The Pareto front, and the baseline if it is not on it."""
    rec = s.recommendation.result.number if s.recommendation else None
    shown = list(s.front)
    if s.baseline is not None and s.baseline.number not in {r.number for r in shown}:
        shown.append(s.baseline)
    rows: list[tuple[str, ...]] = []
    for r in shown:
        marks = []
        if r.number == rec:
            marks.append("recommended")
        if r.is_baseline:
            marks.append("baseline" if r in s.front else "baseline (dominated)")
        rows.append((str(r.number), r.label, *_values(r), quality_label(r.user_attrs), ", ".join(marks)))
    return rows


def quality_note(s: StoredStudy) -> str | None:
    """The quality guard's line on the recommendation (exact, measured, or not measured), if any."""
    decision = s.recommendation.result.user_attrs.get(QUALITY_ATTR) if s.recommendation else None
    return f"Quality: {decision['note']}" if decision else None


def _notes(t: dict[str, Any]) -> str:
    attrs = t["user_attrs"]
    notes = []
    if t["baseline"]:
        notes.append("baseline")
    if attrs.get(REUSED_FROM_ATTR) is not None:
        notes.append(f"reused #{attrs[REUSED_FROM_ATTR]}")
    if attrs.get(NOISY_ATTR):
        notes.append("noisy")
    quality = quality_label(attrs)
    if quality not in ("", "exact"):
        notes.append(f"quality: {quality}")
    broken = {k: v for k, v in (attrs.get(CONSTRAINTS_ATTR) or {}).items() if isinstance(v, (int, float)) and v > 0}
    if broken:
        notes.append("constraints violated: " + ", ".join(f"{k} {v:g}" for k, v in broken.items()))
    if t["state"] in ("FAIL", "PRUNED"):
        notes.append(f"reason: {t['reason'] or 'none recorded'}")
    return "; ".join(notes)


def trial_rows(s: StoredStudy) -> list[tuple[str, ...]]:
    """Every trial: number, state, candidate, objectives, repetitions, duration, notes."""
    rows: list[tuple[str, ...]] = []
    for t in s.trials:
        attrs = t["user_attrs"]
        values = ("", "", "")
        if t["values"] is not None:
            v = dict(zip(METRICS, t["values"]))
            values = (f"{v['ttft_ms']:.2f}", f"{v['decode_tok_s']:.1f}", f"{v['peak_mem_mb']:.2f}")
        duration = f"{t['duration_s']:.1f}" if t["duration_s"] is not None else ""
        rows.append(
            (
                str(t["number"]),
                t["state"].lower(),
                str(attrs.get("candidate", "")),
                *values,
                str(attrs.get("repetitions", "")),
                duration,
                _notes(t),
            )
        )
    return rows


def noise_rows(s: StoredStudy) -> list[tuple[str, str, str]]:
    """Trials flagged noisy: (trial, candidate, why)."""
    rows = []
    for t in s.trials:
        attrs = t["user_attrs"]
        if not attrs.get(NOISY_ATTR):
            continue
        why = []
        if attrs.get("stopped_because"):
            why.append(f"stopped at {attrs['stopped_because']} before reaching the precision asked")
        for m in ("ttft_ms", "decode_tok_s"):
            cv = (attrs.get(f"{m}_stats") or {}).get("cv")
            if cv is not None:
                why.append(f"{m} CV {cv:.0%}")
        if attrs.get("shared_device_with"):
            why.append(f"shared the device with trials {attrs['shared_device_with']}")
        rows.append((str(t["number"]), str(attrs.get("candidate", "")), "; ".join(why) or "flagged noisy"))
    return rows


def settings_snippet(s: StoredStudy) -> str | None:
    """The recommended settings as code to paste (same text the terminal prints)."""
    from kvopt.report.export import StudySettings

    rec = s.recommendation
    if rec is None:
        return None
    src = StudySettings.from_stored(s)
    return str(engine_class(s.engine).paste_snippet(src.model, rec.candidate(), src.workload))


def _lower_is_better(index: int, metric: str) -> Callable[[optuna.trial.FrozenTrial], float]:
    """Objective ``index`` of a trial, signed so that lower is better (as PED-ANOVA takes it)."""
    sign = -METRIC_BY_NAME[metric].sign
    return lambda trial: sign * trial.values[index]


@dataclass(frozen=True)
class Importance:
    """Per objective, each parameter's importance (sums to 1); or why there is none."""

    values: dict[str, dict[str, float]] | None
    message: str


def parameter_importance(study: optuna.Study, min_trials: int = MIN_IMPORTANCE_TRIALS) -> Importance:
    """PED-ANOVA importance of each parameter for each objective, from COMPLETE trials."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < min_trials:
        return Importance(
            None,
            f"not computed: parameter importance needs at least {min_trials} complete trials "
            f"and this study has {len(complete)}; run more trials (study.n_trials) to see it",
        )
    # The best quarter (at least two trials) against all of them.
    quantile = max(0.1, 2.0 / len(complete))
    values: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, m in enumerate(METRICS):
                values[m] = get_param_importances(
                    study,
                    evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile),
                    target=_lower_is_better(i, m),
                )
    except Exception as exc:  # e.g. every complete trial has the same settings
        return Importance(None, f"not computed: optuna could not assess importance ({type(exc).__name__}: {exc})")
    return Importance(
        values,
        f"PED-ANOVA (optuna.importance) over {len(complete)} complete trials: how much each "
        f"parameter separates the best {quantile:.0%} of trials from all, per objective",
    )
