"""Search under every weighting: one recorded grid replayed under many profiles' weights.

A grid is recorded once, under one profile; the profile's best candidate — what the
profile sampler looks for — depends on the weights (``kvopt.select.profile_score``: the
weighted log-ratios to the baseline). Here a grid is replayed under each shipped
profile's weights (``conf/profile/*.yaml``) and under random weightings drawn from a
fixed seed (Dirichlet(1, 1, 1) over TTFT, decode throughput and memory), so the search is
judged where it is weakest, not only on the weighting the grid happened to be recorded with.

Per weighting and sampler: measurements until a candidate within 2% of that weighting's
best score is measured, and until 95% of the table's hypervolume; for the profile sampler
also where the convergence stop fires and whether it fires before the best (within 2%)
has been measured. A study is replayed only as far as those figures need: it ends once
both are reached (and, for the profile sampler, the stop has fired), or at the trial cap
``scripts/bench_search.py`` gives that sampler. The random and grid-order samplers choose
without the weights, so one study per seed serves every weighting (scored under each).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from kvopt.attrs import Failure, failure_kind
from kvopt.config import KvoptConfig
from kvopt.explore import queue_unmeasured_after_repeat, tried_candidates
from kvopt.metrics import DIRECTIONS, METRICS
from kvopt.sampler import check_converged
from kvopt.select import collect_results, recommend
from kvopt.space import CandidateKey, candidate_key
from kvopt.study import enqueue_baseline, make_sampler
from kvopt_bench.common import quartiles
from kvopt_bench.replay import ReplayTable, StudyTrace, replay_config, replay_objective

__all__ = [
    "Weighting",
    "shipped_weightings",
    "random_weightings",
    "with_weights",
    "with_recorded",
    "replay_until",
    "traces_of",
    "evaluate_grid",
    "WITHIN_PCT",
    "HV_LEVEL",
]

WITHIN_PCT = 2.0  # "found": a candidate within 2% of the weighting's best profile score measured
HV_LEVEL = 0.95  # and 95% of the table's hypervolume


@dataclass(frozen=True)
class Weighting:
    """Objective weights (summing to 1) with a name and where they come from."""

    name: str
    weights: dict[str, float]
    source: str

    def overrides(self) -> list[str]:
        return [f"profile.weights.{m}={w}" for m, w in self.weights.items()]


def shipped_weightings(conf: Path) -> list[Weighting]:
    """Every shipped profile's weights (``conf/profile/*.yaml``), profiles with equal weights merged."""
    names: dict[tuple[float, ...], list[str]] = {}
    for path in sorted((conf / "profile").glob("*.yaml")):
        weights = (yaml.safe_load(path.read_text()) or {}).get("weights")
        if weights:
            names.setdefault(tuple(float(weights.get(m, 0.0)) for m in METRICS), []).append(path.stem)
    return [
        Weighting("=".join(stems), dict(zip(METRICS, key)), "conf/profile/" + ", ".join(f"{s}.yaml" for s in stems))
        for key, stems in names.items()
    ]


def random_weightings(n: int, seed: int) -> list[Weighting]:
    """``n`` weightings drawn from Dirichlet(1, 1, 1) (uniform over the simplex) with ``seed``.

    Rounded to 3 decimals, the largest absorbing the rounding, so they sum to 1 as a profile's must.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, draw in enumerate(rng.dirichlet(np.ones(len(METRICS)), size=n)):
        w = [round(float(v), 3) for v in draw]
        top = max(range(len(w)), key=lambda j: w[j])
        w[top] = round(1.0 - sum(v for j, v in enumerate(w) if j != top), 3)
        out.append(
            Weighting(f"random-{i + 1}", dict(zip(METRICS, w)), f"Dirichlet(1, 1, 1), seed {seed}, draw {i + 1}")
        )
    return out


def with_recorded(grid: dict[str, Any], weightings: Sequence[Weighting]) -> list[Weighting]:
    """The grid's own weights (what ``bench_search.py`` replays by default) first, then the others.

    Where one of the others has the same weights, it takes the name ``recorded=<its name>`` instead.
    """
    recorded = {m: float(grid["profile_config"]["weights"].get(m, 0.0)) for m in METRICS}
    same = [w for w in weightings if all(abs(w.weights[m] - recorded[m]) < 1e-9 for m in METRICS)]
    first = Weighting("=".join(["recorded", *(w.name for w in same)]), recorded, "the grid's own profile_config")
    return [first, *(w for w in weightings if w not in same)]


def with_weights(grid: dict[str, Any], weights: dict[str, float]) -> dict[str, Any]:
    """The grid as if recorded under these weights: its table scores and its replays' profile use them."""
    return {**grid, "profile_config": {**grid["profile_config"], "weights": dict(weights)}}


def replay_until(
    table: ReplayTable,
    cfg: KvoptConfig,
    seed: int,
    *,
    n_trials: int,
    pruning: bool = True,
    watch_convergence: bool = False,
    done: Callable[[optuna.Study, int | None], bool] | None = None,
) -> tuple[optuna.Study, int | None]:
    """One replayed study, as ``kvopt_bench.replay.replay_study`` runs it, that can end early.

    ``watch_convergence``: ask kvopt's convergence rule after every trial (as
    ``study.converge`` does) and note the trial count where it first fires, without
    stopping there — the study up to that trial is the one a run would have stopped;
    ``done(study, stopped_at)``: end the study once it says so. Returns the study and the
    trial count where the rule fired (None: it did not).
    """
    space = table.space
    cfg, objective, prior = replay_objective(table, cfg, seed, pruning)
    sampler = make_sampler(cfg.sampler, seed, space, cfg.profile, memory_prior_mb=prior)
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=sampler)
    enqueue_baseline(study, space)
    fired: list[int] = []

    def callback(s: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # As replay_study's: stop once every candidate has been tried; after a repeat, queue an unmeasured one.
        if len(tried_candidates(s)) >= space.size:
            s.stop()
            return
        if watch_convergence and not fired and check_converged(s, space, cfg.profile, memory_prior_mb=prior):
            fired.append(trial.number + 1)
        queue_unmeasured_after_repeat(s, space, trial, random.Random(seed + trial.number))
        if done is not None and done(s, fired[0] if fired else None):
            s.stop()

    study.optimize(objective, n_trials=n_trials, callbacks=[callback], gc_after_trial=False)
    return study, fired[0] if fired else None


def traces_of(study: optuna.Study, tables: Sequence[ReplayTable], sampler: str, seed: int) -> list[StudyTrace]:
    """The study trial by trial, scored against each table (the same grid under other weights).

    The same bookkeeping as ``replay_study``: hypervolume of the complete trials' true
    values, distinct candidates tried, and the shortfall of the best found from each
    table's best profile score.
    """
    first = tables[0]
    found: set[CandidateKey] = set()
    tried: set[CandidateKey] = set()
    hv: list[float] = []
    seconds: list[float] = []
    measured: list[int] = []
    shortfalls: list[list[float]] = [[] for _ in tables]
    bests = [-math.inf for _ in tables]
    spent, wrong, pruned = 0.0, 0, 0
    ratio = 0.0
    for t in study.get_trials(deepcopy=False):
        key = candidate_key(t.params)
        tried.add(key)
        spent += float(t.user_attrs.get("replay_s", 0.0)) if "reused_from" not in t.user_attrs else 0.0
        if t.state == TrialState.COMPLETE:
            if key not in found:
                found.add(key)
                ratio = first.hypervolume(found) / first.full_hv if first.full_hv > 0 else 1.0
            for i, table in enumerate(tables):
                bests[i] = max(bests[i], table.scores.get(key, -math.inf))
        elif failure_kind(t.user_attrs) == Failure.DOMINATED:
            pruned += 1
            wrong += key in first.front_keys
        hv.append(ratio)
        seconds.append(spent)
        measured.append(len(tried))
        for i, table in enumerate(tables):
            best = bests[i]
            shortfalls[i].append((math.exp(table.best_score - best) - 1.0) * 100.0 if best > -math.inf else math.inf)
    return [
        StudyTrace(sampler, seed, True, hv, seconds, wrong, pruned, shortfall, measured) for shortfall in shortfalls
    ]


def _reached(study: optuna.Study, tables: Sequence[ReplayTable]) -> bool:
    """Has the study measured a candidate within 2% of every table's best, and 95% of the hypervolume?"""
    complete = {candidate_key(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    first = tables[0]
    if first.full_hv > 0 and first.hypervolume(complete) / first.full_hv < HV_LEVEL - 1e-12:
        return False
    for table in tables:
        best = max((table.scores.get(k, -math.inf) for k in complete), default=-math.inf)
        if best == -math.inf or (math.exp(table.best_score - best) - 1.0) * 100.0 > WITHIN_PCT + 1e-9:
            return False
    return True


def _inf(v: float | None) -> float:
    return math.inf if v is None else v


def _sampler_summary(traces: Sequence[StudyTrace], size: int) -> dict[str, Any]:
    within = [float(t.measurements_to_score(WITHIN_PCT) or math.inf) for t in traces]
    hv = [float(t.measurements_to(HV_LEVEL) or math.inf) for t in traces]
    return {
        "seeds": len(traces),
        "measurements_to_best_within_2pct": quartiles(within),
        "measurements_to_best_within_2pct_share": quartiles([v / size for v in within]),
        "never_within_2pct": sum(math.isinf(v) for v in within),
        "measurements_to_95": quartiles(hv),
        "measurements_to_95_share": quartiles([v / size for v in hv]),
        "never_95": sum(math.isinf(v) for v in hv),
    }


# The trial cap of each sampler, as scripts/bench_search.py gives it (grid order: every grid point).
def trial_cap(sampler: str, size: int) -> int:
    return 10 * size if sampler == "grid" else size


def evaluate_grid(
    grid: dict[str, Any],
    weightings: Sequence[Weighting],
    *,
    seeds: int,
    samplers: Sequence[str] = ("profile", "random", "grid"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Replay the grid under every weighting; per weighting and sampler, the figures of the module doc."""
    tables = [ReplayTable(with_weights(grid, w.weights)) for w in weightings]
    size = tables[0].space.size
    per: dict[str, dict[str, Any]] = {
        w.name: {
            "weights": w.weights,
            "source": w.source,
            "best": next(c.label for c in t.space.candidates() if candidate_key(c.params()) == t.best_key),
            "best_score": t.best_score,
            "samplers": {},
        }
        for w, t in zip(weightings, tables)
    }
    for name in samplers:
        if name == "profile":
            for w, table in zip(weightings, tables):
                cfg = replay_config(table.grid, name)
                traces, stops = [], []
                for seed in range(seeds):

                    def done(s: optuna.Study, fired: int | None, table: ReplayTable = table) -> bool:
                        return fired is not None and _reached(s, [table])

                    study, fired = replay_until(
                        table, cfg, seed, n_trials=trial_cap(name, size), watch_convergence=True, done=done
                    )
                    trace = traces_of(study, [table], name, seed)[0]
                    traces.append(trace)
                    stops.append(_stop_record(study, trace, table, cfg, fired))
                per[w.name]["samplers"][name] = _sampler_summary(traces, size)
                per[w.name]["convergence_stop"] = _stop_summary(stops, size)
                _log_row(log, w, name, per[w.name])
        else:
            # The weights do not enter these samplers' choices: one study per seed, scored under every weighting.
            cfg = replay_config(grid, name)
            by_weighting: list[list[StudyTrace]] = [[] for _ in weightings]
            for seed in range(seeds):
                study, _ = replay_until(
                    tables[0], cfg, seed, n_trials=trial_cap(name, size), done=lambda s, _f: _reached(s, tables)
                )
                for i, trace in enumerate(traces_of(study, tables, name, seed)):
                    by_weighting[i].append(trace)
            for w, traces in zip(weightings, by_weighting):
                per[w.name]["samplers"][name] = _sampler_summary(traces, size)
                _log_row(log, w, name, per[w.name])
    return {"space_size": size, "seeds": seeds, "weightings": per, "summary": summarize_weightings(per, size, samplers)}


def _stop_record(
    study: optuna.Study, trace: StudyTrace, table: ReplayTable, cfg: KvoptConfig, fired: int | None
) -> dict[str, Any]:
    """Where the convergence stop fired and what the study knew then."""
    if fired is None:
        return {"fired": False, "early": False, "measurements": None, "recommended_within_2pct": None}
    found_at = trace.trials_to_score(WITHIN_PCT)
    rec = recommend([r for r in collect_results(study) if r.number < fired], cfg.profile)
    shortfall = None
    if rec is not None:
        shortfall = (math.exp(table.best_score - table.scores[candidate_key(rec.result.params)]) - 1.0) * 100.0
    return {
        "fired": True,
        # Stopped before a candidate within 2% of the best had been measured: a dishonest stop.
        "early": found_at is None or found_at > fired,
        "measurements": trace.measured[fired - 1],
        "recommended_within_2pct": shortfall is not None and shortfall <= WITHIN_PCT + 1e-9,
    }


def _stop_summary(stops: Sequence[dict[str, Any]], size: int) -> dict[str, Any]:
    at = [float(s["measurements"]) if s["fired"] else math.inf for s in stops]
    return {
        "runs": len(stops),
        "fired": sum(s["fired"] for s in stops),
        "early": sum(s["early"] for s in stops),
        "measurements_at_stop": quartiles(at),
        "share_at_stop": quartiles([v / size for v in at]),
        "recommended_within_2pct": sum(bool(s["recommended_within_2pct"]) for s in stops),
    }


def summarize_weightings(per: dict[str, dict[str, Any]], size: int, samplers: Sequence[str]) -> dict[str, Any]:
    """Per sampler: the median over weightings and the worst weighting of each figure's median over seeds."""
    out: dict[str, Any] = {}
    for name in samplers:
        entry: dict[str, Any] = {}
        for figure in ("measurements_to_best_within_2pct", "measurements_to_95"):
            medians = {w: _inf(v["samplers"][name][figure]["median"]) for w, v in per.items()}
            worst = max(medians, key=lambda w: medians[w])
            middle = statistics.median(medians.values())
            entry[figure] = {
                "median_over_weightings": None if math.isinf(middle) else middle,
                "worst": None if math.isinf(medians[worst]) else medians[worst],
                "worst_weighting": worst,
                "median_over_weightings_share": None if math.isinf(middle) else middle / size,
                "worst_share": None if math.isinf(medians[worst]) else medians[worst] / size,
            }
        out[name] = entry
    if "profile" in samplers and "random" in samplers:
        # Per weighting: the profile sampler's median against random sampling's, same weighting.
        ratios = {
            w: _inf(v["samplers"]["profile"]["measurements_to_best_within_2pct"]["median"])
            / _inf(v["samplers"]["random"]["measurements_to_best_within_2pct"]["median"])
            for w, v in per.items()
        }
        worst = max(ratios, key=lambda w: ratios[w] if not math.isnan(ratios[w]) else -1.0)
        out["profile_over_random_within_2pct"] = {"worst": ratios[worst], "worst_weighting": worst}
    if "profile" in samplers:
        stops = [v["convergence_stop"] for v in per.values()]
        runs = sum(s["runs"] for s in stops)
        out["convergence_stop"] = {
            "runs": runs,
            "fired": sum(s["fired"] for s in stops),
            "early": sum(s["early"] for s in stops),
            "early_share": sum(s["early"] for s in stops) / runs if runs else 0.0,
            "recommended_within_2pct": sum(s["recommended_within_2pct"] for s in stops),
            "measurements_at_stop_median_over_weightings": statistics.median(
                _inf(s["measurements_at_stop"]["median"]) for s in stops
            ),
        }
    return out


def targets(summary: dict[str, Any], per: dict[str, dict[str, Any]], size: int) -> dict[str, Any]:
    """Issue 24's targets for one grid (meant for grids of at least 48 candidates)."""
    profile = summary["profile"]
    within = profile["measurements_to_best_within_2pct"]
    worst_hv = max(_inf(v["samplers"]["profile"]["measurements_to_95"]["median"]) for v in per.values())
    out = {
        "worst_within_2pct_at_most_15pct": _inf(within["worst"]) <= 0.15 * size,
        "median_within_2pct_at_most_10pct": _inf(within["median_over_weightings"]) <= 0.10 * size,
        "hv95_within_30pct_every_weighting": worst_hv <= 0.30 * size,
        "hv95_worst_share": worst_hv / size,
    }
    if "profile_over_random_within_2pct" in summary:
        out["worst_within_2pct_at_most_half_random"] = summary["profile_over_random_within_2pct"]["worst"] <= 0.5
    if "convergence_stop" in summary:
        out["convergence_early_at_most_10pct"] = summary["convergence_stop"]["early_share"] <= 0.10
    return out


def _fmt(q: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        return "never" if v is None else f"{v:.3g}"

    return f"{one(q['median'])} [{one(q['q1'])}–{one(q['q3'])}]"


def _log_row(log: Callable[[str], None], w: Weighting, sampler: str, entry: dict[str, Any]) -> None:
    s = entry["samplers"][sampler]
    weights = "/".join(f"{entry['weights'][m]:.3g}" for m in METRICS)
    line = (
        f"| {w.name} | {weights} | {entry['best']} | {sampler} | {_fmt(s['measurements_to_best_within_2pct'])} | "
        f"{_fmt(s['measurements_to_95'])} |"
    )
    if sampler == "profile":
        stop = entry["convergence_stop"]
        line += (
            f" {_fmt(stop['measurements_at_stop'])}; fired {stop['fired']}/{stop['runs']}, before the best "
            f"{stop['early']}, recommended within 2% {stop['recommended_within_2pct']} |"
        )
    else:
        line += " |"
    log(line)
