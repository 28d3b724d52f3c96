"""A whole study: check everything, probe, measure trials, decide, write the results.

Everything a user can get wrong is checked in :func:`prepare`, before any study is
created or altered; :func:`tune` then runs trials until the budget is spent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import OmegaConf
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from rich.console import Console

from kvopt.attrs import ENGINE_ATTR
from kvopt.config import KvoptConfig
from kvopt.confirm import MIN_ROUNDS, Confirmation, choose_finalists, confirm
from kvopt.engines import engine_class
from kvopt.engines.base import Engine, Loader, WeightsSource
from kvopt.errors import ConfigError
from kvopt.explore import queue_unmeasured_after_repeat, remaining_candidates
from kvopt.interrupt import catch_interrupts, raise_if_interrupted
from kvopt.machine import machine_info, memory_budget_bytes, resolve_device
from kvopt.metrics import METRICS
from kvopt.paths import write_json_atomic
from kvopt.protocol import full_length_reason
from kvopt.quality import quality_summary
from kvopt.report.dashboard import publish_study
from kvopt.report.export import StudySettings, write_settings
from kvopt.report.terminal import (
    StudyProgress,
    command_console,
    print_confirmation,
    print_plan,
    print_summary,
)
from kvopt.sampler import WarmStart, check_converged, warm_start_from
from kvopt.screen import screen
from kvopt.select import Recommendation, Result, collect_results, recommend
from kvopt.space import SearchSpace
from kvopt.storage import describe_storage, open_storage, study_lock
from kvopt.stored import StoredStudy, open_existing_storage, stored_study, trial_records
from kvopt.study import (
    check_compatible,
    enqueue_baseline,
    make_sampler,
    open_study,
    resume_space,
    study_device_label,
    study_name,
)
from kvopt.trial import Objective, TrialOutcome, outcome_of
from kvopt.workers import (
    DeviceLock,
    Requeue,
    WorkerIdentity,
    WorkerObjective,
    device_turn,
    open_device_lock,
    recover_dead_trials,
    worker_identity,
)
from kvopt.workload import Workload, WorkloadMix, make_mix, placement

__all__ = ["Prepared", "StudyResult", "prepare", "tune"]


@dataclass
class Prepared:
    """Everything checked and resolved before the study is touched."""

    cfg: KvoptConfig
    device: torch.device
    weights: WeightsSource
    engine: Engine
    mix: WorkloadMix
    space: SearchSpace
    storage: BaseStorage
    storage_label: str
    name: str
    existing_trials: int
    memory_budget_bytes: int | None = None
    # Who this worker is, and its host-local device lock (None with scale.shared_device=flag).
    identity: WorkerIdentity | None = None
    device_lock: DeviceLock | None = None
    # perf_counter() when prepare() began: the job's wall time counts the probe too.
    started: float | None = None
    # study.warm_start read: the other study's measurements and profile-best.
    warm_start: WarmStart = field(default_factory=WarmStart)
    # study.budget, started when prepare() began (None: no budget).
    budget: Budget | None = None

    @property
    def workload(self) -> Workload:
        """The shape every trial measures (the mix's trial shape)."""
        return self.mix.trial

    def device_turn(self) -> contextlib.AbstractContextManager[float]:
        """Hold the device while timing outside a trial (confirmation), if waiting is the policy."""
        return device_turn(self.device_lock, self.cfg.scale)


@dataclass
class StudyResult:
    """What :func:`tune` returns: the run record plus what only this run saw.

    The record (:class:`kvopt.stored.StoredStudy`) is built once, from storage, after the
    confirmation: the same description ``kvopt report`` and ``kvopt.load`` read back, and the
    one every output of this run renders (terminal, results.json, recommended.*, report).
    """

    record: StoredStudy
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped_because: str = "n_trials reached"
    confirmation: Confirmation | None = None
    wall_s: float | None = None

    @property
    def study_name(self) -> str:
        """The study's name in its storage."""
        return self.record.name

    @property
    def storage(self) -> str:
        """The storage's label (passwords masked)."""
        return self.record.storage

    @property
    def results(self) -> list[Result]:
        """Every completed candidate of the study."""
        return self.record.results

    @property
    def front(self) -> list[Result]:
        """The Pareto front of the completed candidates."""
        return self.record.front

    @property
    def baseline(self) -> Result | None:
        """The baseline's result, if it completed."""
        return self.record.baseline

    @property
    def recommendation(self) -> Recommendation | None:
        """The profile's (confirmed) recommendation, if any candidate completed."""
        return self.record.recommendation

    def to_dict(self) -> dict[str, Any]:
        """The run's summary for results.json."""
        rec = self.recommendation
        return {
            "study_name": self.study_name,
            "wall_s": self.wall_s,
            "storage": self.storage,
            "metrics": list(METRICS),
            "stopped_because": self.stopped_because,
            "pareto_front": [_result_dict(r) for r in self.front],
            "baseline": _result_dict(self.baseline) if self.baseline else None,
            "recommendation": None
            if rec is None
            else {
                **_result_dict(rec.result),
                "score": rec.score,
                "gains_pct": rec.gains_pct,
                "meets_slo": rec.meets_slo,
                "note": rec.note,
                "gains_ci": rec.gains_ci,
                "confirmed_rounds": rec.confirmed_rounds,
            },
            "confirmation": self.confirmation.to_dict() if self.confirmation else None,
        }


# The share of study.budget the search may use; confirmation gets the rest. Confirmation's
# set-up (a full-length check per finalist and shape) is a large, fixed cost on a slow
# machine, and fewer than 5 rounds confirm nothing, so it gets close to half.
SEARCH_SHARE = 0.55
# Seconds kept at the end of the budget for reading the study back and writing the outputs.
OUTPUT_RESERVE_S = 5.0


@dataclass
class Budget:
    """``study.budget`` split between search and confirmation, on the monotonic clock."""

    seconds: float
    started: float  # time.monotonic() when the command began

    @property
    def search_end(self) -> float:
        """When the last trial should have ended."""
        return self.started + SEARCH_SHARE * self.seconds

    @property
    def end(self) -> float:
        """When the confirmation's rounds must have ended (outputs follow)."""
        return self.started + self.seconds - OUTPUT_RESERVE_S

    def describe(self) -> str:
        """The plan's line: how the budget will be split."""
        return (
            f"{_duration(self.seconds)} for search and confirmation: trials until "
            f"{_duration(SEARCH_SHARE * self.seconds)} (none starts that would not end by then), "
            f"confirmation rounds until {_duration(self.seconds - OUTPUT_RESERVE_S)}; n_trials and timeout stay caps"
        )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _result_dict(r: Result) -> dict[str, Any]:
    return {
        "number": r.number,
        "candidate": r.label,
        "params": r.params,
        "values": r.values,
        "quality": quality_summary(r.user_attrs),
    }


def prepare(cfg: KvoptConfig) -> Prepared:
    """Resolve model, device, weights, storage and search space; raise KvoptError on bad input."""
    started = time.perf_counter()
    time_budget = Budget(cfg.study.budget, time.monotonic()) if cfg.study.budget else None
    # The engine=... option picks the engine; the model it names is checked before any work.
    engine_type = engine_class(cfg.engine.name)
    engine_type.check_config(cfg)
    # The model the user named (its own config.json or GGUF file): p.cfg carries it from here on.
    cfg, weights = engine_type.resolve(cfg)
    device = resolve_device(cfg.device)
    scale = cfg.scale
    # RDB heartbeats: another worker fails a trial whose worker fell silent, and re-queues it.
    storage = open_storage(
        cfg.storage, heartbeat_s=scale.heartbeat_s, grace_s=scale.grace_s, on_stale=Requeue(scale.max_retry)
    )
    # The study name holds the device kind, not its index, so workers pinned to
    # cuda:0, cuda:1, ... (device=cuda:${worker}) share one study.
    name = study_name(cfg, study_device_label(device))
    identity = worker_identity(cfg.worker, device)
    device_lock = open_device_lock(scale, identity, name)
    engine: Engine = engine_type(cfg.model, weights, device, cfg.seed, cfg)
    mix = make_mix(cfg.profile, cfg.model)
    with device_turn(device_lock, cfg.scale):  # the probe times dtype matmuls: not beside another worker's trial
        space = engine.search_space(mix)
    budget = memory_budget_bytes(cfg.pruning.memory_budget_mb, device)
    # No trial on what cannot fit or cannot be recommended (after what cannot run: the probe's).
    space = screen(
        space, engine.predict_memory, mix.trial, weights=weights.kind, quality=cfg.quality, memory_budget_bytes=budget
    )
    space = resume_space(storage, name, space)  # a stored study keeps its distributions
    existing = check_compatible(storage, name, space)
    warm = _read_warm_start(cfg, storage, name, space)
    return Prepared(
        cfg=cfg,
        device=device,
        weights=weights,
        engine=engine,
        mix=mix,
        space=space,
        storage=storage,
        storage_label=describe_storage(cfg.storage),
        name=name,
        existing_trials=existing,
        memory_budget_bytes=budget,
        identity=identity,
        device_lock=device_lock,
        started=started,
        warm_start=warm,
        budget=time_budget,
    )


def _read_warm_start(cfg: KvoptConfig, storage: BaseStorage, name: str, space: SearchSpace) -> WarmStart:
    """``study.warm_start``: STUDY (in this run's storage) or STUDY@STORAGE_URL, which must exist."""
    arg = cfg.study.warm_start
    if not arg:
        return WarmStart()
    study_name, sep, url = arg.partition("@")
    source = storage
    if sep:
        source, _ = open_existing_storage(url)
    try:
        names = optuna.get_all_study_names(storage=source)
    except Exception as exc:  # a file that is not an Optuna storage, a server that went away
        raise ConfigError(
            [f"study.warm_start: got {arg!r} but its storage cannot be read ({type(exc).__name__})"]
        ) from None
    if study_name not in names or (not sep and study_name == name):
        have = ", ".join(repr(n) for n in sorted(set(names) - {name})) or "none"
        raise ConfigError(
            [
                f"study.warm_start: got {arg!r} but there is no such other study; allowed: "
                f"a study of the same search space, STUDY or STUDY@STORAGE_URL (studies there: {have})"
            ]
        )
    warm = warm_start_from(optuna.load_study(study_name=study_name, storage=source), space, cfg.profile)
    if not warm.observations:
        raise ConfigError(
            [
                f"study.warm_start: got {arg!r} but it has no measured candidate of this "
                "search space; allowed: a study of the same search space"
            ]
        )
    return warm


def _plan_lines(p: Prepared) -> list[tuple[str, str]]:
    cfg, w = p.cfg, p.workload
    choices = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in p.space.all_choices().items())
    resume = f" (continuing: {p.existing_trials} trials stored)" if p.existing_trials else ""
    # Combinations of these choices dropped one by one (their lines follow the plan).
    excluded = f"; {len(p.space.excluded)} more dropped" if p.space.excluded else ""
    return [
        ("study", f"{p.name}{resume}"),
        ("storage", p.storage_label),
        ("engine", p.engine.name),
        ("model", p.engine.describe_model()),
        ("device", str(p.device)),
        (
            "workload",
            f"{cfg.profile.name}: trials measure {w.prompt_tokens} prompt + {w.new_tokens} new tokens, "
            f"{cfg.profile.warmup} warm-up + "
            + (
                f"{cfg.profile.repetitions}–{max(cfg.measure.max_repetitions, cfg.profile.repetitions)} timed runs "
                f"(until ±{cfg.measure.rel_precision:.0%} at 95%, at most {cfg.measure.max_seconds:g} s)"
                if cfg.measure.adaptive
                else f"{cfg.profile.repetitions} timed runs"
            ),
        ),
        ("protocol", _protocol_line(p)),
        *_mix_lines(p.mix, p.engine, p.space),
        ("search space", f"{choices} ({p.space.size} candidates{excluded})"),
        ("baseline", p.space.baseline.label),
        *([("budget", p.budget.describe())] if p.budget else []),
        *_warm_line(p),
    ]


def _protocol_line(p: Prepared) -> str:
    """How a timed run is made on the trials' shape: split (prefill-only call + decode window) or whole calls."""
    w, measure = p.workload, p.cfg.measure
    reason = full_length_reason(p.engine, p.space.baseline, w, measure)
    if reason is not None:
        return f"whole calls (TTFT and decode from each generate): {reason}"
    where = placement(w.prompt_tokens, w.new_tokens, measure.decode_window)
    return (
        f"split: TTFT from prefill-only calls (1 new token), decode tok/s from a {where.steps}-step window "
        f"after {where.context_tokens} cached tokens (mean context {w.prompt_tokens + w.new_tokens / 2:g}, "
        "as in the full call); peak memory from one full-length call"
        + (f"; {note}" if (note := p.engine.protocol_note()) else "")
    )


def _mix_lines(mix: WorkloadMix, engine: Engine, space: SearchSpace) -> list[tuple[str, str]]:
    """The mix's shapes (finalists are confirmed on each) and its shared prefix, and whether the search reuses it."""
    lines = []
    if len(mix.shapes) > 1:
        lines.append(("shapes", f"{mix.describe()}; finalists are confirmed on every shape"))
    if mix.shared_prefix_tokens:
        lines.append(("shared prefix", f"{mix.describe_prefix()}; {engine.prefix_reuse_note(space)}"))
    return lines


def _warm_line(p: Prepared) -> list[tuple[str, str]]:
    warm = p.warm_start
    if not warm.observations:
        return []
    first = f"; tries {warm.first[0].label} first" if warm.first else ""
    return [("warm start", f"{warm.label}: {len(warm.observations)} measured candidates as the model's prior{first}")]


def _study_attrs(p: Prepared) -> dict[str, Any]:
    return {
        "machine": machine_info(p.device),
        "config": p.cfg.raw | {"storage": {"backend": p.cfg.storage.backend, "url": p.storage_label}},
        "workload": {
            "prompt_tokens": p.workload.prompt_tokens,
            "new_tokens": p.workload.new_tokens,
            "note": "; ".join(p.mix.notes) or None,
            **p.mix.as_dict(),
        },
        "weights": p.weights.kind,
        ENGINE_ATTR: p.engine.name,
        "dropped_choices": p.space.dropped,
        "baseline": p.space.baseline.as_dict(),
        "profile": p.cfg.profile.name,
        "model": p.cfg.model.name,
    }


def _counts(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in counts:
            counts[t.state.name] += 1
    return counts


def _describe(outcome: TrialOutcome) -> str:
    head = f"#{outcome.number} {outcome.candidate.label}"
    if outcome.is_baseline:
        head += " (baseline)"
    if outcome.values is None:
        return f"{head}: {outcome.state.name.lower()}: {outcome.reason}"
    ttft, tput, mem = outcome.values
    tail = f" (reused #{outcome.reused_from})" if outcome.reused_from is not None else ""
    quality = f", quality: {outcome.quality}" if outcome.quality else ""
    return f"{head}: ttft {ttft:.1f} ms, decode {tput:.1f} tok/s, mem {mem:.1f} MB{quality}{tail}"


class _AfterTrial:
    """What happens after each trial of this run: report it, then decide whether to go on.

    Optuna calls it as a callback. It logs the trial, fails trials of workers that died,
    shows the current best, and stops the study when the space is exhausted or the search
    has converged; after a repeated candidate it queues an unmeasured one so no sampler stalls.
    """

    def __init__(self, p: Prepared, progress: StudyProgress, identity: WorkerIdentity, requeue: Requeue) -> None:
        self.p = p
        self.progress = progress
        self.identity = identity
        self.requeue = requeue
        self.outcomes: list[TrialOutcome] = []
        self.stopped: list[str] = []  # why the study stopped, once it did
        self.search_started = time.monotonic()
        # The memory model's prior for the convergence check: fixed for the run, computed once.
        self.memory_prior = p.engine.memory_prior(p.workload)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        p, cfg, progress = self.p, self.p.cfg, self.progress
        outcome = outcome_of(trial, p.space)
        self.outcomes.append(outcome)
        progress.log(_describe(outcome))
        for number in recover_dead_trials(study, self.identity, self.requeue):
            progress.log(f"trial #{number} was left running by a worker that stopped: marked failed")
        rec = recommend(collect_results(study), cfg.profile)
        progress.advance(rec.result.label if rec else "-")
        reason = self._stop_reason(study)
        if reason is not None:
            self.stopped.append(reason)
            study.stop()
        elif len(self.outcomes) < cfg.study.n_trials:  # only a trial this run will take: none left waiting
            queued = queue_unmeasured_after_repeat(study, p.space, trial, random.Random(cfg.seed + trial.number))
            if queued is not None:
                progress.log(f"  #{trial.number} was a repeat: {queued.label} (not measured yet) goes next")
        raise_if_interrupted()  # Ctrl-C swallowed during the trial: stop now

    def _stop_reason(self, study: optuna.Study) -> str | None:
        """Why the study should stop now (every candidate measured, or converged), else None."""
        p, cfg = self.p, self.p.cfg
        if not remaining_candidates(study, p.space):  # excluded candidates drawn by TPE do not count
            return f"every candidate of the search space ({p.space.size}) has been measured"
        if p.budget is not None and self.outcomes:
            # Another trial starts only if, at the mean trial length so far, it ends within the search's share.
            now = time.monotonic()
            mean = (now - self.search_started) / len(self.outcomes)
            if now + mean > p.budget.search_end:
                return f"study.budget: another trial (~{mean:.0f} s) would pass the search's share of the budget"
        if not cfg.study.converge:
            return None
        converged = check_converged(
            study, p.space, cfg.profile, memory_prior_mb=self.memory_prior, warm_start=p.warm_start.observations
        )
        return None if converged is None else str(converged)

    def cap_reason(self) -> str:
        """Why a study that no rule stopped ended: its timeout or its trial count."""
        cfg = self.p.cfg
        timed_out = cfg.study.timeout is not None and len(self.outcomes) < cfg.study.n_trials
        return f"study.timeout ({cfg.study.timeout:g} s) reached" if timed_out else "n_trials reached"


def _open_shared_study(
    p: Prepared, attrs: dict[str, Any], identity: WorkerIdentity, requeue: Requeue, console: Console
) -> optuna.Study:
    """Create or open the study, seeded apart per run and worker, with the baseline queued."""
    cfg = p.cfg
    # A re-run reseeds by the stored trial count, so it does not replay the first run's
    # draws; workers started together reseed by their index, so they do not draw alike.
    sampler = make_sampler(
        cfg.sampler,
        cfg.seed + p.existing_trials + 7919 * cfg.worker,
        p.space,
        cfg.profile,
        memory_prior_mb=p.engine.memory_prior(p.workload),
        warm_start=p.warm_start.observations,
        warm_first=p.warm_start.first,
    )
    # One worker at a time creates the study, fails dead workers' trials and queues the baseline.
    with study_lock(cfg.storage, p.storage, p.name):
        study = open_study(p.storage, p.name, sampler, attrs)
        for number in recover_dead_trials(study, identity, requeue):
            console.print(f"trial #{number} was left running by a worker that stopped: marked failed", highlight=False)
        enqueue_baseline(study, p.space)
    return study


def _worker_objective(p: Prepared, loader: Loader, identity: WorkerIdentity, requeue: Requeue) -> WorkerObjective:
    """kvopt's trial objective, wrapped for sharing the study and the device with other workers."""
    cfg = p.cfg
    objective = Objective(
        p.space,
        p.engine,
        p.workload,
        loader=loader,
        warmup=cfg.profile.warmup,
        repetitions=cfg.profile.repetitions,
        seed=cfg.seed,
        measure=cfg.measure,
        trial=cfg.trial,
        slo=cfg.profile.slo,
        memory_budget_bytes=p.memory_budget_bytes,
        dominance_pruning=cfg.pruning.dominated,
        quality=cfg.quality,
    )
    return WorkerObjective(
        objective,
        p.space,
        identity,
        cfg.scale,
        p.device_lock,
        requeue,
        wait_timeout_s=cfg.trial.timeout_s + cfg.scale.grace_s,
    )


def tune(
    cfg: KvoptConfig,
    *,
    output_dir: Path | None = None,
    console: Console | None = None,
    prepared: Prepared | None = None,
) -> StudyResult:
    """Run the study the config describes and return its front and recommendation.

    The flow: plan -> open the study -> trials until a stop rule or a cap -> confirm the
    finalists -> read the run record back from storage -> print and write it.
    """
    console = console or command_console()
    p = prepared or prepare(cfg)
    cfg = p.cfg  # the resolved model
    print_plan(console, _plan_lines(p), p.space.dropped)
    for note in p.mix.notes:
        console.print(f"[yellow]note[/yellow]          {note}", highlight=False)

    started = p.started or time.perf_counter()
    identity = p.identity or worker_identity(cfg.worker, p.device)
    requeue = Requeue(cfg.scale.max_retry)
    attrs = _study_attrs(p)
    study = _open_shared_study(p, attrs, identity, requeue, console)
    loader = p.engine.loader()
    shared = _worker_objective(p, loader, identity, requeue)
    interrupted = False
    nothing_left = _nothing_left_to_measure(p, study)
    if nothing_left is not None:
        console.print(nothing_left, highlight=False)
    with StudyProgress(console, cfg.study.n_trials, cfg.study.timeout) as progress:
        after_trial = _AfterTrial(p, progress, identity, requeue)
        if nothing_left is not None:
            after_trial.stopped.append("nothing left to measure")
        try:
            with catch_interrupts():
                if nothing_left is None:
                    study.optimize(
                        shared,
                        n_trials=cfg.study.n_trials,
                        timeout=_search_timeout(cfg.study.timeout, p.budget),
                        callbacks=[after_trial],
                        gc_after_trial=False,
                    )
        except KeyboardInterrupt:
            after_trial.stopped.append("interrupted by the user (Ctrl-C)")
            interrupted = True
    loader.release()
    stopped = after_trial.stopped or [after_trial.cap_reason()]
    outcomes = after_trial.outcomes

    search_s = time.perf_counter() - started
    console.print(f"stopped: {stopped[0]}", highlight=False)
    confirmation = None if interrupted else _confirm_recommendation(p, study, console)
    wall_s = time.perf_counter() - started
    console.print(_time_spent(search_s, confirmation, wall_s, p.budget), highlight=False)
    # The run record, read back from storage once everything is stored: every output below renders it.
    result = StudyResult(
        record=stored_study(study, p.storage_label),
        outcomes=outcomes,
        stopped_because=stopped[0],
        confirmation=confirmation,
        wall_s=wall_s,
    )
    snippet = None
    if result.recommendation is not None:
        snippet = p.engine.paste_snippet(cfg.model, result.recommendation.candidate(), p.workload)
    print_summary(console, result.front, result.baseline, result.recommendation, _counts(study), snippet)
    if output_dir is not None:
        _write_outputs(output_dir, p, study, result, attrs)
        console.print(f"results: {output_dir / 'results.json'}", highlight=False)
        console.print(f"report: {output_dir / 'report.html'}", highlight=False)
    console.print(f"dashboard: python -m kvopt dashboard storage.url={_dashboard_arg(p)}", highlight=False)
    if interrupted:
        raise KeyboardInterrupt
    return result


def _nothing_left_to_measure(p: Prepared, study: optuna.Study) -> str | None:
    """The line to print when every runnable candidate has been measured (no trial can add one), else None."""
    if remaining_candidates(study, p.space):
        return None
    return (
        f"nothing left to measure: every runnable candidate of the search space ({p.space.size}) "
        "has been measured; this run adds confirmation rounds"
    )


def _search_timeout(timeout: float | None, budget: Budget | None) -> float | None:
    """Optuna's timeout: study.timeout, or what is left of the search's share of the budget if sooner."""
    if budget is None:
        return timeout
    left = max(1.0, budget.search_end - time.monotonic())
    return left if timeout is None else min(timeout, left)


def _time_spent(search_s: float, confirmation: Confirmation | None, wall_s: float, budget: Budget | None) -> str:
    """The end's line: where the command's time went, against its budget."""
    parts = [f"search {search_s:.0f} s"]
    if confirmation is not None:
        parts.append(f"confirmation {confirmation.setup_s:.0f} s set-up + {confirmation.seconds:.0f} s rounds")
    tail = f" of study.budget {budget.seconds:.0f} s" if budget is not None else ""
    return f"time: {', '.join(parts)}; {wall_s:.0f} s in all{tail}"


def _confirm_recommendation(p: Prepared, study: optuna.Study, console: Console) -> Confirmation | None:
    """Re-measure the finalists in paired rounds until the decision is clear; store the outcome with the study.

    The recommendation then follows the confirmed numbers: the run record applies the
    stored confirmation (:func:`kvopt.confirm.confirmed_recommendation`), as ``kvopt report`` does.
    A stored confirmation of the same finalists is continued (a re-run adds rounds to it).
    """
    cfg = p.cfg
    results = collect_results(study)
    rec = recommend(results, cfg.profile)
    baseline = next((r for r in results if r.is_baseline), None)
    if cfg.confirm.rounds == 0 or rec is None or baseline is None:
        return None
    finalists = choose_finalists(results, rec.result, cfg.profile, cfg.confirm.top_k)
    if len(finalists) < 2:
        return None
    console.print(
        f"confirming {len(finalists)} finalists in paired interleaved rounds until the decision is clear "
        f"(at least {MIN_ROUNDS}, at most {cfg.confirm.rounds}): " + ", ".join(f"#{r.number}" for r in finalists),
        highlight=False,
    )
    try:
        with p.device_turn():  # interleaved rounds time the finalists: the device is ours meanwhile
            confirmation = confirm(
                finalists,
                space=p.space,
                engine=p.engine,
                workload=p.workload,
                shapes=p.mix.shapes,
                profile=cfg.profile,
                cfg=cfg.confirm,
                seed=cfg.seed,
                measure=cfg.measure,
                deadline=p.budget.end if p.budget else None,
                previous=study.user_attrs.get("confirmation"),
                on_round=lambda n, s: console.print(f"  round {n} done ({s:.1f} s)", highlight=False),
            )
    except Exception as exc:  # the study's own result stands if confirmation cannot run
        console.print(f"[yellow]confirmation failed[/yellow]: {type(exc).__name__}: {exc}", highlight=False)
        return None
    study.set_user_attr("confirmation", confirmation.to_dict())
    print_confirmation(console, confirmation)
    return confirmation


def _dashboard_arg(p: Prepared) -> str:
    if p.cfg.storage.backend == "journal":
        return str(Path(str(p.cfg.storage.url)).resolve())
    return p.storage_label


def _write_outputs(
    output_dir: Path, p: Prepared, study: optuna.Study, result: StudyResult, attrs: dict[str, Any]
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        **result.to_dict(),
        "model": p.cfg.model.name,
        "profile": p.cfg.profile.name,
        "device": str(p.device),
        "workload": attrs["workload"],
        "search_space": {"choices": p.space.choices(), "dropped": p.space.dropped},
        "machine": attrs["machine"],
        # For sweep summaries and workers sharing a study.
        "worker": p.cfg.worker,
        "host": p.identity.host if p.identity else None,
        "trials_this_run": len(result.outcomes),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "trials": trial_records(study),
    }
    write_json_atomic(output_dir / "results.json", payload)
    write_settings(output_dir, StudySettings.from_stored(result.record))
    (output_dir / "resolved_config.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.create(attrs["config"])), encoding="utf-8"
    )
    # report.md/.html and plots here; the study's note and artifacts for optuna-dashboard.
    # The measurements are stored and results.json written by now: a report that cannot be
    # made or published is said, never allowed to fail the run.
    try:
        publish_study(output_dir, study, p.storage_label, p.cfg.storage)
    except Exception as exc:
        Console(stderr=True).print(
            f"[yellow]report not written or published[/yellow]: {type(exc).__name__}: {exc}; "
            f"re-create it with: python -m kvopt report study.name={p.name} storage.url={p.storage_label}",
            highlight=False,
        )
