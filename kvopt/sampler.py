"""kvopt's default sampler: search where the profile's recommendation can still change.

The study keeps its three objectives (the front, the dashboard and the alternatives need
them), but the user asked one question — which setting is best *for this profile* — and
the sampler spends its trials on that. Every trial it:

1. reads the study: measured candidates (complete, or stopped early by the dominance
   rule with a partial median), candidates that cannot run (and, after an out-of-memory,
   every larger batch with the same settings), candidates another worker is measuring;
2. fits :class:`kvopt.surrogate.PerformanceModel` (TTFT, throughput and memory of every
   unmeasured candidate, with an uncertainty; batch size and nbits ordinal; memory
   relative to the analytic prediction; a warm-start study's measurements as a prior);
3. proposes the unmeasured candidate with the highest **expected improvement of the
   profile score** (``kvopt.select``'s weighted log-ratio to the baseline) over the best
   measured score, times the probability that it meets the profile's SLOs — except every
   ``front_every``-th trial, which goes to the candidate expected to extend the measured
   Pareto front the most (so the alternatives shown beside the recommendation stay good).

It is an Optuna ``BaseSampler``: studies, storages, workers sharing a study and the
dashboard work as with any sampler. The decision is made in ``before_trial`` and handed
out parameter by parameter, so conditional parameters (quantized options, compile) need
nothing special; a queued trial (baseline, retry) keeps its fixed parameters.

:func:`convergence` is the stop rule: the study has its answer when no unmeasured
candidate can plausibly beat the best measured profile score by more than that score's
own measurement uncertainty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from kvopt.attrs import BASELINE_ATTR, CONSTRAINTS_ATTR, Failure, failure_kind
from kvopt.config import ProfileConfig
from kvopt.metrics import METRIC_BY_NAME, METRICS
from kvopt.quality import QUALITY
from kvopt.select import slo_violations
from kvopt.space import Candidate, SearchSpace, candidate_key
from kvopt.surrogate import Observation, PerformanceModel, log_ci_half_width, score_of, score_sd_of

__all__ = [
    "ProfileSampler",
    "StudyState",
    "read_study",
    "fit_model",
    "convergence",
    "check_converged",
    "Converged",
    "observations_of",
    "CONVERGE_Z",
    "WarmStart",
    "predict_call_seconds",
    "warm_start_from",
]

Key = tuple[tuple[str, Any], ...]

# One-sided 95%: an unmeasured candidate "can plausibly win" while the upper end of its
# predicted score's 95% band reaches past the best score plus that score's own noise.
CONVERGE_Z = 1.645
# Front steps begin once this many trials have finished: the first trials find the
# profile's best region (in development replays of 10 seeds on the two 48-candidate grids,
# front steps from the start delayed finding it by 1-2 measurements at the median).
FRONT_START = 8
# Below this expected improvement of the profile score (log units) a profile step has
# nothing left to find: the trial goes to the front instead.
_NOTHING_TO_GAIN = 0.002
# Noise of a median measured before the dominance rule stopped the candidate (few runs).
_PARTIAL_NOISE_SD = 0.15
_MEMORY_NOISE_SD = 0.02
# Samples per candidate for the front step's Monte Carlo estimate.
_FRONT_SAMPLES = 64
_SLO_METRIC = {m.slo_key: m for m in METRIC_BY_NAME.values()}


def _log_noise_sd(stats: dict[str, Any] | None, floor: float) -> float:
    """The log-scale standard deviation of a measured median, from its stored 95% CI."""
    half = log_ci_half_width(stats)
    return floor if half is None else max(floor, half / 1.96)


def _complete_entry(
    t: FrozenTrial, space: SearchSpace
) -> tuple[Candidate, tuple[float, float, float], tuple[float, float, float]]:
    """A complete trial as the model sees it: candidate, objective values, their log-noise."""
    assert t.values is not None
    noise = (
        _log_noise_sd(t.user_attrs.get("ttft_ms_stats"), 0.02),
        _log_noise_sd(t.user_attrs.get("decode_tok_s_stats"), 0.02),
        _MEMORY_NOISE_SD,
    )
    values = (float(t.values[0]), float(t.values[1]), float(t.values[2]))
    return space.make_candidate(t.params), values, noise


def _failed_to_run(trial: FrozenTrial) -> bool:
    """The candidate cannot run here (constraint ``runs`` > 0) or must not be used (``quality`` > 0,
    :mod:`kvopt.quality`): never propose it again."""
    stored = trial.user_attrs.get(CONSTRAINTS_ATTR, {})
    for key in ("runs", QUALITY):
        value = trial.constraints.get(key, stored.get(key))
        if value is not None and value > 0:
            return True
    return False


def _over_quality(trial: FrozenTrial) -> bool:
    """The candidate's outputs broke the quality bounds (constraint ``quality`` > 0)."""
    value = trial.constraints.get(QUALITY, trial.user_attrs.get(CONSTRAINTS_ATTR, {}).get(QUALITY))
    return value is not None and value > 0


def _out_of_memory(trial: FrozenTrial) -> bool:
    return failure_kind(trial.user_attrs) == Failure.OUT_OF_MEMORY


@dataclass
class StudyState:
    """What the study has told so far about its candidates."""

    observations: list[Observation] = field(default_factory=list)
    # Complete measurements of this study: key -> (candidate, values in METRICS order, noise sds).
    measured: dict[Key, tuple[Candidate, tuple[float, float, float], tuple[float, float, float]]] = field(
        default_factory=dict
    )
    partial: set[Key] = field(default_factory=set)  # stopped early by the dominance rule
    cannot_run: set[Key] = field(default_factory=set)
    taken: set[Key] = field(default_factory=set)  # running or queued (another worker, or next)
    baseline: tuple[float, float, float] | None = None
    finished: int = 0

    def untried(self, space: SearchSpace) -> list[Candidate]:
        """Candidates nobody has measured, tried, or is measuring."""
        done = set(self.measured) | self.partial | self.cannot_run | self.taken
        return [c for c in space.candidates() if candidate_key(c.params()) not in done]


def read_study(study: optuna.Study, space: SearchSpace, *, skip_trial: int | None = None) -> StudyState:
    """Turn the study's trials into observations and sets of done/excluded candidates."""
    state = StudyState()
    oom: list[Candidate] = []
    lossy: list[Candidate] = []  # over the quality bounds: every candidate with the same outputs is too
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.number == skip_trial or not t.params:
            if t.number != skip_trial and t.state in (TrialState.WAITING,) and t.system_attrs.get("fixed_params"):
                state.taken.add(candidate_key(t.system_attrs["fixed_params"]))
            continue
        key = candidate_key(t.params)
        try:
            candidate = space.make_candidate(t.params)
        except KeyError:
            continue
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            state.taken.add(key)
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            state.finished += 1
        if t.state == TrialState.COMPLETE and t.values is not None:
            if key in state.measured:
                continue
            state.measured[key] = _complete_entry(t, space)
            if t.user_attrs.get(BASELINE_ATTR):
                state.baseline = state.measured[key][1]
        elif t.state == TrialState.PRUNED:
            if _failed_to_run(t):
                state.cannot_run.add(key)
                if _out_of_memory(t):
                    oom.append(candidate)
                if _over_quality(t):
                    lossy.append(candidate)
            elif "ttft_ms_stats" in t.user_attrs:
                state.partial.add(key)
    # A batch that ran out of memory: every larger one with the same settings would too.
    for failed in oom:
        for c in space.candidates():
            if c.batch_size > failed.batch_size and _same_but_batch(c, failed):
                state.cannot_run.add(candidate_key(c.params()))
    # Outputs over the quality bounds: the same outputs at another batch size or thread count are too.
    for failed in lossy:
        for c in space.candidates():
            if c.fidelity_params() == failed.fidelity_params():
                state.cannot_run.add(candidate_key(c.params()))
    state.observations = observations_of(trials, space, state)
    return state


def _one_change(a: Candidate, b: Candidate) -> bool:
    """``b`` differs from ``a`` in exactly one setting (a knob with the options under it: the engine's groups)."""
    ga, gb = a.groups(), b.groups()
    return sum(ga.get(k) != gb.get(k) for k in ga.keys() | gb.keys()) == 1


def _same_but_batch(a: Candidate, b: Candidate) -> bool:
    pa, pb = a.params(), b.params()
    pa.pop("batch_size")
    pb.pop("batch_size")
    return pa == pb


def observations_of(
    trials: Sequence[FrozenTrial], space: SearchSpace, state: StudyState, source: int = 0
) -> list[Observation]:
    """Observations for the performance model: complete trials, and partial medians of early-stopped ones."""
    out: list[Observation] = []
    for candidate, values, noise in state.measured.values():
        out.append(
            Observation(
                candidate,
                {m: math.log(v) for m, v in zip(METRICS, values) if v > 0},
                dict(zip(METRICS, noise)),
                source,
            )
        )
    seen: set[Key] = set()
    for t in trials:
        if t.state != TrialState.PRUNED or not t.params:
            continue
        key = candidate_key(t.params)
        if key not in state.partial or key in seen or key in state.measured:
            continue
        seen.add(key)
        log_values: dict[str, float] = {}
        partial_noise: dict[str, float] = {}
        for metric in ("ttft_ms", "decode_tok_s"):
            median = (t.user_attrs.get(f"{metric}_stats") or {}).get("median")
            if median and median > 0:
                log_values[metric] = math.log(median)
                partial_noise[metric] = _PARTIAL_NOISE_SD
        mem = t.user_attrs.get("peak_mem_mb")
        if mem and mem > 0:  # memory is exact after the first call, even if the trial stopped early
            log_values["peak_mem_mb"] = math.log(mem)
            partial_noise["peak_mem_mb"] = _MEMORY_NOISE_SD
        if log_values:
            out.append(Observation(space.make_candidate(t.params), log_values, partial_noise, source))
    return out


# The last few fits, keyed by what they were fitted on: a trial asks for the same fit up to
# three times (the sampler's choice, the bounded-call check, the convergence check).
_FITS: dict[tuple[Any, ...], PerformanceModel] = {}
_FITS_KEPT = 8


def fit_model(
    space: SearchSpace,
    observations: Sequence[Observation],
    memory_prior_mb: Callable[[Candidate], float] | None = None,
) -> PerformanceModel:
    """A performance model of the space fitted on these observations (memoised)."""
    key = (
        id(space),
        id(memory_prior_mb),
        tuple(
            (o.candidate, tuple(sorted(o.log_values.items())), tuple(sorted(o.noise_sd.items())), o.source)
            for o in observations
        ),
    )
    model = _FITS.get(key)
    if model is None or model.space is not space:
        model = PerformanceModel(space, memory_prior_mb).fit(observations)
        if len(_FITS) >= _FITS_KEPT:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = model
    return model


def _best_measured(state: StudyState, profile: ProfileConfig) -> tuple[Key, float, float] | None:
    """Key, profile score and score noise (sd) of the best measured candidate meeting the SLOs."""
    if state.baseline is None:
        return None
    base = np.log(np.array(state.baseline))
    best: tuple[Key, float, float] | None = None
    for key, (_, values, noise) in state.measured.items():
        if slo_violations(dict(zip(METRICS, values)), profile.slo):
            continue
        score = float(score_of(np.log(np.array(values)), base, profile.weights))
        if best is None or score > best[1]:
            sd = float(score_sd_of(np.array(noise), profile.weights))
            best = (key, score, sd)
    return best


def _p_meets_slo(means: np.ndarray, sds: np.ndarray, slo: dict[str, float | None]) -> np.ndarray:
    """Probability that each candidate meets every SLO, under the model."""
    p = np.ones(len(means))
    for name, limit in slo.items():
        if limit is None or name not in _SLO_METRIC:
            continue
        metric = _SLO_METRIC[name]
        j = METRICS.index(metric.name)
        z = -metric.sign * (math.log(limit) - means[:, j]) / sds[:, j]
        p *= _normal_cdf(z)
    return p


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    """Expected amount by which a Gaussian score exceeds ``best``."""
    z = (mean - best) / sd
    return sd * (z * _normal_cdf(z) + _normal_pdf(z))


@dataclass(frozen=True)
class Converged:
    """Why the study can stop: the best, its noise, and the closest challenger."""

    best_label: str
    best_score: float
    noise: float
    challenger: str | None
    challenger_upper: float | None
    unmeasured: int

    def __str__(self) -> str:
        head = (
            f"converged (best profile score {self.best_score:+.3f} ± {self.noise:.3f}, {self.best_label}; "
            f"none of {self.unmeasured} unmeasured candidates can plausibly beat it"
        )
        if self.challenger is not None and self.challenger_upper is not None:
            head += f": the closest, {self.challenger}, reaches {self.challenger_upper:+.3f} at 95%"
        return head + ")"


def convergence(
    state: StudyState,
    space: SearchSpace,
    profile: ProfileConfig,
    model: PerformanceModel,
    *,
    z: float = CONVERGE_Z,
    min_measured: int = 4,
) -> Converged | None:
    """The stop rule: has the study found the profile's best, as far as can be told?

    Stop when, for every candidate not yet measured (and able to run), the upper end of its
    predicted profile score's one-sided band — ``mean + z * sd`` under the performance
    model, ``z`` = 1.645 for 95% — does not exceed the best measured (SLO-meeting) score by
    more than that score's own measurement noise (1.96 × its standard deviation, from the
    medians' confidence intervals), or the candidate is unlikely (< 5%) to meet the SLOs.
    Needs the baseline and at least ``min_measured`` measured candidates.
    """
    best = _best_measured(state, profile)
    if best is None or len(state.measured) < min_measured:
        return None
    key, best_score, best_sd = best
    noise = 1.96 * best_sd
    pool = [c for c in state.untried(space)]
    label = state.measured[key][0].label
    if not pool:
        return Converged(label, best_score, noise, None, None, 0)
    means, sds = model.predict(pool)
    base = np.log(np.array(state.baseline))
    upper = score_of(means, base, profile.weights) + z * score_sd_of(sds, profile.weights)
    plausible = _p_meets_slo(means, sds, profile.slo) >= 0.05
    threat = np.where(plausible, upper, -np.inf)
    i = int(np.argmax(threat))
    if threat[i] > best_score + noise:
        return None
    return Converged(
        label, best_score, noise, pool[i].label if np.isfinite(threat[i]) else None, float(upper[i]), len(pool)
    )


class ProfileSampler(BaseSampler):
    """Profile-directed Bayesian search over kvopt's enumerated candidates (see module doc).

    Args:
        space: the probed search space.
        profile: weights and SLOs the recommendation is chosen by.
        seed: seeds ties and the Monte Carlo draws.
        front_every: every n-th trial extends the Pareto front instead (0: never).
        memory_prior_mb: analytic memory prediction per candidate (the memory model's offset).
        warm_start: observations of another study (``source`` = 1) seeding the model.
        warm_first: candidates to try first (the other study's profile-best), in order.
    """

    def __init__(
        self,
        space: SearchSpace,
        profile: ProfileConfig,
        seed: int | None = None,
        *,
        front_every: int = 4,
        memory_prior_mb: Callable[[Candidate], float] | None = None,
        warm_start: Sequence[Observation] = (),
        warm_first: Sequence[Candidate] = (),
        local_first: bool = True,
    ) -> None:
        self.space = space
        self.profile = profile
        self.front_every = front_every
        self.local_first = local_first
        self.memory_prior_mb = memory_prior_mb
        self.warm_start = list(warm_start)
        self.warm_first = list(warm_first)
        self._rng = np.random.default_rng(seed)
        self._tie = random.Random(seed)
        self._fallback = RandomSampler(seed=seed)
        self._chosen: dict[int, dict[str, Any]] = {}
        self.last_choice: dict[int, str] = {}  # trial number -> why it was chosen (for the log)

    # Optuna's sampler interface -------------------------------------------------------
    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "fixed_params" in trial.system_attrs:
            return  # a queued trial (baseline, a retry, an unmeasured candidate): keep it
        choice = self.choose(study, trial.number)
        if choice is not None:
            candidate, why = choice
            self._chosen[trial.number] = candidate.params()
            self.last_choice[trial.number] = why

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        params = self._chosen.get(trial.number, {})
        if param_name in params:
            value = params[param_name]
            if param_distribution._contains(param_distribution.to_internal_repr(value)):
                return value
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._chosen.pop(trial.number, None)

    # The decision ---------------------------------------------------------------------
    def choose(self, study: optuna.Study, number: int) -> tuple[Candidate, str] | None:
        """The candidate trial ``number`` should measure, and why; None: nothing left."""
        state = read_study(study, self.space, skip_trial=number)
        pool = state.untried(self.space)
        if not pool:
            return None
        pool_keys = {candidate_key(c.params()): c for c in pool}
        for c in self.warm_first:
            if candidate_key(c.params()) in pool_keys:
                return c, "warm start: the other study's profile-best"
        if state.baseline is None:
            c = pool[self._tie.randrange(len(pool))]
            return c, "no baseline measured yet: random"
        model = fit_model(self.space, [*state.observations, *self.warm_start], self.memory_prior_mb)
        means, sds = model.predict(pool)
        front_turn = state.finished >= FRONT_START and state.finished % self.front_every == self.front_every - 1
        if self.front_every and front_turn:
            choice = self._front_step(pool, state, means, sds)
            if choice is not None:
                return choice
        # The profile's answer is known (the stop rule holds; a study runs on only with
        # study.converge=false, under a trial cap, or beside other workers): the front is all
        # that is left to improve.
        converged = convergence(state, self.space, self.profile, model) if self.front_every else None
        if converged is not None:
            choice = self._front_step(pool, state, means, sds)
            if choice is not None:
                candidate, why = choice
                return candidate, f"{why}; the profile's answer is known ({converged.challenger or 'no'} challenger)"
        base = np.log(np.array(state.baseline))
        mean_score = score_of(means, base, self.profile.weights)
        sd_score = score_sd_of(sds, self.profile.weights)
        best = _best_measured(state, self.profile)
        best_score = best[1] if best is not None else 0.0
        acquisition = expected_improvement(mean_score, sd_score, best_score) * _p_meets_slo(
            means, sds, self.profile.slo
        )
        # Trust region: while the best measured candidate has unmeasured neighbours (one
        # setting changed), choose among them. Early on the model cannot yet tell apart
        # settings changed together; one change at a time from the incumbent can.
        where = "profile"
        if best is not None and self.local_first:
            incumbent = state.measured[best[0]][0]
            near = np.array([_one_change(incumbent, c) for c in pool])
            if near.any():
                acquisition = np.where(near, acquisition, -1.0)
                where = f"profile (near {incumbent.label})"
        i = self._argmax(acquisition)
        if self.front_every and acquisition[i] < _NOTHING_TO_GAIN:
            choice = self._front_step(pool, state, means, sds)
            if choice is not None:
                return choice[0], f"{choice[1]}; the profile has nothing left to gain ({acquisition[i]:.4f})"
        return pool[i], (
            f"{where}: predicted score {mean_score[i]:+.3f} ± {sd_score[i]:.3f}, "
            f"expected improvement {acquisition[i]:.4f} over {best_score:+.3f}"
        )

    def _argmax(self, values: np.ndarray) -> int:
        top = np.flatnonzero(values >= values.max() - 1e-12)
        return int(top[self._tie.randrange(len(top))])

    def _front_step(
        self, pool: list[Candidate], state: StudyState, means: np.ndarray, sds: np.ndarray
    ) -> tuple[Candidate, str] | None:
        gain = self._front_gain(state, means, sds)
        if float(gain.max()) <= 0:
            return None
        i = self._argmax(gain)
        return pool[i], f"front: expected front extension {gain[i]:.3f} (share of each axis' range)"

    def _front_gain(self, state: StudyState, means: np.ndarray, sds: np.ndarray) -> np.ndarray:
        """Expected additive-epsilon improvement of the measured front (all axes minimised, log).

        For a draw ``p`` of a candidate and each measured point ``f``: ``max_m (f_m - p_m)``
        is how far ``p`` beats ``f`` on its best axis; the smallest over ``f`` is how far
        ``p`` stands out of the front (<= 0: dominated). Its mean over draws, clipped at 0.
        """
        signs = np.array([-1.0 if m == "decode_tok_s" else 1.0 for m in METRICS])
        front = np.array([np.log(np.array(v)) * signs for (_, v, _) in state.measured.values()])
        # Each axis in units of its range over the space (measured and predicted), as the
        # hypervolume is judged: memory that spans 30% must count as much as TTFT spanning 30x.
        everything = np.vstack([front, means * signs])
        span = np.maximum(everything.max(axis=0) - everything.min(axis=0), 1e-6)
        front = front / span
        draws = self._rng.normal(means * signs / span, sds / span, size=(_FRONT_SAMPLES, *means.shape))
        # (S, P, F, 3) -> max over axes -> min over front -> clip -> mean over draws
        lead = (front[None, None, :, :] - draws[:, :, None, :]).max(axis=-1).min(axis=-1)
        return np.clip(lead, 0.0, None).mean(axis=0)


def check_converged(
    study: optuna.Study,
    space: SearchSpace,
    profile: ProfileConfig,
    *,
    memory_prior_mb: Callable[[Candidate], float] | None = None,
    warm_start: Sequence[Observation] = (),
    z: float = CONVERGE_Z,
) -> Converged | None:
    """:func:`convergence` on the study as it stands (any sampler): fit, then apply the rule."""
    state = read_study(study, space)
    if state.taken:
        return None  # another worker is measuring: its result may change the answer
    model = fit_model(space, [*state.observations, *warm_start], memory_prior_mb)
    return convergence(state, space, profile, model, z=z)


@dataclass
class WarmStart:
    """What another study of the same space brings: its measurements and where to start.

    ``observations`` enter the performance model with their own intercept per objective
    (``source`` = 1), so its ranking transfers, not its machine's absolute numbers;
    ``first`` is its profile-best under *this* study's profile, tried first.
    """

    observations: list[Observation] = field(default_factory=list)
    first: list[Candidate] = field(default_factory=list)
    label: str = ""


def warm_start_from(other: optuna.Study, space: SearchSpace, profile: ProfileConfig) -> WarmStart:
    """Read another study as a warm start for ``space`` (candidates outside it are skipped)."""
    inside = {candidate_key(c.params()) for c in space.candidates()}
    trials = [t for t in other.get_trials(deepcopy=False) if t.params and candidate_key(t.params) in inside]
    state = StudyState()
    for t in trials:
        if t.state == TrialState.COMPLETE and t.values is not None and candidate_key(t.params) not in state.measured:
            entry = state.measured[candidate_key(t.params)] = _complete_entry(t, space)
            if t.user_attrs.get(BASELINE_ATTR):
                state.baseline = entry[1]
        elif t.state == TrialState.PRUNED and "ttft_ms_stats" in t.user_attrs and not _failed_to_run(t):
            state.partial.add(candidate_key(t.params))
    observations = observations_of(trials, space, state, source=1)
    best = _best_measured(state, profile)
    first = [state.measured[best[0]][0]] if best is not None else []
    return WarmStart(observations, first, other.study_name)


def predict_call_seconds(
    study: optuna.Study, space: SearchSpace, candidate: Candidate, new_tokens: int
) -> tuple[float, float, int] | None:
    """One ``generate`` call's predicted seconds: (generous lower end, typical, observations used).

    TTFT plus ``batch × (new_tokens − 1)`` tokens at the predicted throughput, from the
    performance model fitted on the study's measurements. The lower end takes TTFT one
    standard deviation low and throughput one high. None until the baseline is measured.
    """
    state = read_study(study, space)
    if state.baseline is None:
        return None
    model = fit_model(space, state.observations)
    # The most likely prior scale's band, not the mixture's: with the baseline alone measured,
    # the mixture spans every scale and its lower end would excuse any call.
    means, sds = model.predict([candidate], average=False)
    ttft, tput = METRICS.index("ttft_ms"), METRICS.index("decode_tok_s")
    tokens = candidate.batch_size * max(new_tokens - 1, 0)

    def seconds(shift: float) -> float:
        return math.exp(means[0, ttft] + shift * sds[0, ttft]) / 1000.0 + tokens / math.exp(
            means[0, tput] - shift * sds[0, tput]
        )

    return seconds(-1.0), seconds(0.0), model.n_observations
