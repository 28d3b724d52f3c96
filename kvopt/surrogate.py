"""A performance model: what an unmeasured candidate would measure, with an uncertainty.

kvopt's search space is small and structured: a handful of categorical settings (cache,
attention, dtype) and an ordered batch size along which TTFT, throughput and memory move
smoothly. Each objective is modelled on the log scale (the profile score is made of
log-ratios, so the model's errors are in the score's own units) as a Bayesian linear
regression on features that carry that structure:

- the baseline's level of every setting is the reference (the intercept is the baseline);
- each other level of a setting adds a main effect; pairs of settings an interaction;
- batch size enters as ``log2(batch)`` and its square (ordinal: batch 4 lies between 2
  and 8), with a slope per level of every setting, the baseline's level included (a
  static cache scales differently; float32 need not scale as bfloat16 did);
- the other ordinal knobs (quantized nbits, threads) enter as ``log2(value)``, with
  interactions with the batch and with each other;
- what the linear model cannot express (three settings together) is an extra residual of
  the timings, correlated between candidates by how many settings they share: a candidate
  far from everything measured keeps a wider band than one next to a measurement;
- peak memory is modelled relative to kvopt's analytic prediction (``kvopt.engines.transformers.predict``),
  which is already within about ±9%: the regression learns the small remainder;
- observations from another study (a warm start) get their own intercept per objective,
  so what transfers is the ranking, not the other machine's absolute numbers.

The prior on each weight is a Gaussian (zero mean but for what the engine knows), and
its scale and the model's misfit (how far the truth strays from a linear model) are
weighed per fit by marginal likelihood over a small grid — a mixture of the posteriors,
not the best pair alone: with few observations the model stays uncertain, with many it
trusts its fit only as much as the fit earns. Pure numpy, in weight space (features x
features); a fit of a few hundred candidates takes milliseconds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kvopt.metrics import METRICS, SIGN
from kvopt.space import Candidate, SearchSpace

__all__ = [
    "Observation",
    "Prediction",
    "CandidateEncoder",
    "PerformanceModel",
    "metric_signs",
    "score_of",
    "score_sd_of",
    "log_ci_half_width",
]

# +1 where higher is better (throughput), -1 where lower is (TTFT, memory).
_SIGNS = np.array([SIGN[m] for m in METRICS])
# Noise floor of one measured median on the log scale (kvopt measures to about ±5%).
_MIN_NOISE_SD = 0.02
# Prior scales (log units) of the blocks of weights, before the fitted multiplier.
# Batch terms are per the space's whole batch range (x runs 0 -> 1 from its smallest to its
# largest batch): throughput can grow 30x from batch 1 to 32 (e^3.4), so the slope's prior is wide.
_PRIOR_SD = {
    "intercept": 10.0,
    "main": 1.0,
    "batch": 2.0,
    "batch2": 1.0,
    "batch_slope": 0.7,
    "pair": 0.5,
    "ordinal": 0.5,
    "ordinal_pair": 0.5,
    "source": 3.0,
}
# Prior means of the batch slope, log units per doubling of the batch: decode is bound by
# reading the weights, so its throughput grows nearly in proportion at small batches
# (x1.6 per doubling assumed); prefill does proportionally more work (TTFT x1.4 assumed).
# The data overrule them within a few trials; they only decide what is worth trying first.
BATCH_PRIOR_PER_DOUBLING = {"ttft_ms": 0.35, "decode_tok_s": 0.5, "peak_mem_mb": 0.0}
_SCALE_GRID = (0.25, 0.5, 1.0, 2.0)
# Hyperparameter pairs whose marginal-likelihood weight is below this are left out of the mixture.
_MIN_COMPONENT = 1e-3
# Extra noise of a warm-start observation (log units): another machine, model or version
# ranks alike only roughly, so this study's own measurements soon outweigh it.
_TRANSFER_SD = 0.25
_MISFIT_GRID = (0.01, 0.03, 0.06, 0.12, 0.25)
# Interactions the linear model cannot express (three settings together, e.g. compile x eager x
# batch): an unmeasured candidate's timings carry an extra residual, correlated between
# candidates as UNSEEN_RHO ** (settings that differ). Its variance left once the nearest measured
# candidate is known, UNSEEN_SD**2 * (1 - UNSEEN_RHO ** (2 d)), widens a prediction the farther
# the candidate lies from everything measured (issue 24's weighting replays, with the ordinal
# interactions below: the stop fired before the best in 6.7% of runs instead of 12.7%).
UNSEEN_SD = 0.15
UNSEEN_RHO = 0.5


def log_ci_half_width(stats: dict | None) -> float | None:
    """Half the width of a median's stored 95% CI on the log scale (~1.96 sd); None if absent."""
    if not stats or not stats.get("ci_low") or not stats.get("ci_high"):
        return None
    low, high = float(stats["ci_low"]), float(stats["ci_high"])
    if low <= 0 or high <= 0:
        return None
    return (math.log(high) - math.log(low)) / 2.0


def metric_signs() -> dict[str, float]:
    """+1 for objectives to maximise, -1 for those to minimise, by metric name."""
    return dict(zip(METRICS, (float(s) for s in _SIGNS)))


@dataclass
class Observation:
    """One measured (or partly measured) candidate, as the model sees it.

    ``values`` holds the log of each metric that was observed (a candidate stopped early
    has timings but they are medians of few runs: a larger ``noise_sd``). ``source`` is 0
    for this study, 1 for a warm-start study.
    """

    candidate: Candidate
    log_values: dict[str, float]
    noise_sd: dict[str, float]
    source: int = 0


@dataclass
class Prediction:
    """Predicted log value of each metric for one candidate: mean and standard deviation."""

    mean: np.ndarray  # (3,) in METRICS order, log scale
    sd: np.ndarray  # (3,)


class CandidateEncoder:
    """Feature vectors of a search space's candidates (the ordinal encoding lives here)."""

    def __init__(self, space: SearchSpace) -> None:
        base = space.baseline
        # Every combination, excluded ones too: a stored study may hold measurements of them.
        candidates = space.all_candidates()
        # The engine's categorical factors (each knob with its categorical options), baseline level left out.
        kind = space.candidate_type
        base_levels = base.levels()
        seen = [c.levels() for c in candidates]
        self.factors: dict[str, list[str]] = {
            factor: [
                level
                for level in kind.factor_order(factor, [lv[factor] for lv in seen if factor in lv])
                if level != base_levels[factor]
            ]
            for factor in base_levels
        }
        # Batch slopes are per level of every setting, the baseline's level included: each
        # level's slope is the shared slope plus its own deviation, so batches measured at one
        # level (bfloat16) inform the baseline's (float32) only as far as the levels agree.
        # (A setting with one level only has no slope of its own: the shared slope is its slope.)
        self.slope_levels: dict[str, list[str]] = {
            factor: [base_levels[factor], *levels] for factor, levels in self.factors.items() if levels
        }
        self._ordinals = list(base.ordinals())
        self._type = kind
        self._prefix_share = space.prefix_share
        batches = space.values("batch_size")
        self._base_log2_batch = math.log2(base.batch_size)
        self._log2_batch_span = max(math.log2(max(batches) / min(batches)), 1.0)
        names: list[str] = ["intercept"]
        blocks: list[str] = ["intercept"]
        for factor, levels in self.factors.items():
            for level in levels:
                names.append(f"{factor}={level}")
                blocks.append("main")
        names += ["log2_batch", "log2_batch^2"]
        blocks += ["batch", "batch2"]
        for factor, levels in self.slope_levels.items():
            for level in levels:
                names.append(f"log2_batch*{factor}={level}")
                blocks.append("batch_slope")
        for (f1, l1s), (f2, l2s) in itertools.combinations(self.factors.items(), 2):
            for l1, l2 in itertools.product(l1s, l2s):
                names.append(f"{f1}={l1}*{f2}={l2}")
                blocks.append("pair")
        for name in self._ordinals:
            names.append(f"log2_{name}")
            blocks.append("ordinal")  # an ordinal knob besides the batch (quantized nbits, threads)
        # Ordinal knobs interact with each other and with the batch (measured on the llama.cpp grid:
        # one prefill thread pays off only with small batches), on a centred scale (0 at the
        # baseline's value). Interactions with every level of every setting as well were tried and
        # dropped: more uncertainty, later stops, no better search (issue 24's replays).
        self._ord_scale = self._ordinal_scales(space, candidates)
        ords = list(self._ord_scale)
        for name in ords:
            names.append(f"log2_batch*{name}")
            blocks.append("ordinal_pair")
        for a, b in itertools.combinations(ords, 2):
            names.append(f"{a}*{b}")
            blocks.append("ordinal_pair")
        names.append("source")
        blocks.append("source")
        self.names = names
        self.blocks = blocks
        self._hyper: tuple[np.ndarray, np.ndarray] | None = None
        self._memo: dict[tuple[Candidate, int], np.ndarray] = {}
        self.prior_sd = np.array([_PRIOR_SD[b] for b in blocks])
        # Which weights the fitted prior multiplier scales (not the free intercepts).
        self.scaled = np.array([b not in ("intercept", "source") for b in blocks])

    @staticmethod
    def _ordinal_scales(space: SearchSpace, candidates: Sequence[Candidate]) -> dict[str, tuple[float, float]]:
        """Each ordinal knob (but the batch) with more than one value: (log2 of the baseline's value,
        or of the smallest where the baseline has none; log2 span of its values, at least 1)."""
        base = space.baseline.params()
        out: dict[str, tuple[float, float]] = {}
        for knob in space.knobs:
            if knob.kind != "ordinal" or knob.name == "batch_size":
                continue
            values = sorted({c.params()[knob.name] for c in candidates if c.params().get(knob.name)})
            if len(values) < 2:
                continue
            ref = math.log2(base[knob.name]) if base.get(knob.name) else math.log2(values[0])
            out[knob.name] = (ref, max(math.log2(values[-1] / values[0]), 1.0))
        return out

    def hyper_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (prior scale, misfit) pair the fit weighs: prior sds (G, p) and misfits (G,), scale-major."""
        if self._hyper is None:
            scales = np.array(_SCALE_GRID)[:, None]
            prior_sd = np.where(self.scaled[None, :], self.prior_sd * scales, self.prior_sd)
            self._hyper = (
                np.repeat(prior_sd, len(_MISFIT_GRID), axis=0),
                np.tile(np.array(_MISFIT_GRID), len(_SCALE_GRID)),
            )
        return self._hyper

    def prior_mean(self, metric: str) -> np.ndarray:
        """The prior mean of the weights of one objective's model (zero but the batch slope and prefix reuse)."""
        mean = np.zeros(len(self.names))
        mean[self.names.index("log2_batch")] = BATCH_PRIOR_PER_DOUBLING.get(metric, 0.0) * self._log2_batch_span
        for feature, value in self._type.prior_means(metric, self._prefix_share).items():
            if feature in self.names:  # effects the engine knows before measuring (prefix reuse's TTFT)
                mean[self.names.index(feature)] = value
        return mean

    def levels(self, candidate: Candidate) -> dict[str, str]:
        return candidate.levels()

    def encode(self, candidate: Candidate, source: int = 0) -> np.ndarray:
        """The feature vector of one candidate (memoised: a study asks for the same ones often)."""
        key = (candidate, source)
        row = self._memo.get(key)
        if row is None:
            row = self._memo[key] = self._encode(candidate, source)
        return row

    def _encode(self, candidate: Candidate, source: int) -> np.ndarray:
        levels = self.levels(candidate)
        x = (math.log2(candidate.batch_size) - self._base_log2_batch) / self._log2_batch_span
        row: list[float] = [1.0]
        for factor, options in self.factors.items():
            row += [1.0 if levels[factor] == level else 0.0 for level in options]
        row += [x, x * x]
        for factor, options in self.slope_levels.items():
            row += [x if levels[factor] == level else 0.0 for level in options]
        for (f1, l1s), (f2, l2s) in itertools.combinations(self.factors.items(), 2):
            row += [1.0 if levels[f1] == l1 and levels[f2] == l2 else 0.0 for l1, l2 in itertools.product(l1s, l2s)]
        ordinals = candidate.ordinals()
        row += [ordinals.get(name, 0.0) for name in self._ordinals]
        params = candidate.params()
        u = {
            name: (math.log2(params[name]) - ref) / span if params.get(name) else 0.0
            for name, (ref, span) in self._ord_scale.items()
        }
        row += [x * u[name] for name in u]
        row += [u[a] * u[b] for a, b in itertools.combinations(u, 2)]
        row.append(float(source))
        return np.array(row)

    def encode_many(self, candidates: Sequence[Candidate], source: int = 0) -> np.ndarray:
        return np.array([self.encode(c, source) for c in candidates]).reshape(len(candidates), len(self.names))


_ENCODERS: dict[int, tuple[SearchSpace, CandidateEncoder]] = {}


def encoder_for(space: SearchSpace) -> CandidateEncoder:
    """One encoder per search space, so its memoised feature vectors serve every fit."""
    kept = _ENCODERS.get(id(space))
    if kept is None or kept[0] is not space:
        if len(_ENCODERS) >= 16:
            _ENCODERS.pop(next(iter(_ENCODERS)))
        kept = _ENCODERS[id(space)] = (space, CandidateEncoder(space))
    return kept[1]


@dataclass
class _Fit:
    """The posterior of one objective's weights: a mixture over the (prior scale, misfit) grid.

    Each component is the posterior under one pair; its weight is that pair's marginal
    likelihood (a flat prior over the grid), components below ``_MIN_COMPONENT`` dropped.
    """

    weights: np.ndarray  # (K,) summing to 1
    means: np.ndarray  # (K, p) posterior means of the weights
    covs: np.ndarray  # (K, p, p) posterior covariances
    misfit_sd: np.ndarray  # (K,) how far the truth strays from the linear model (log units)
    log_ml: np.ndarray  # (K,) each pair's log marginal likelihood

    def predict(self, X: np.ndarray, average: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the true value at each row of ``X``: the mixture's
        moments, or (``average=False``) the most likely pair's alone (ties: the smallest prior scale)."""
        keep = slice(None) if average else [int(np.argmax(np.round(self.log_ml, 9)))]
        weights = self.weights[keep] / self.weights[keep].sum()
        mu = X @ self.means[keep].T  # (N, K)
        quad = np.stack([((X @ c) * X).sum(axis=1) for c in self.covs[keep]], axis=1)  # (N, K)
        var = quad + self.misfit_sd[keep][None, :] ** 2
        mean = mu @ weights
        second = (var + mu**2) @ weights
        return mean, np.sqrt(np.maximum(second - mean**2, 1e-12))


@dataclass
class PerformanceModel:
    """Bayesian linear models of log TTFT, log throughput and log memory over a space.

    Args:
        space: the (probed) search space whose candidates are predicted.
        memory_prior_mb: the analytic memory prediction of a candidate (MB), used as the
            memory model's offset; ``None``: memory is modelled from scratch like the timings.
    """

    space: SearchSpace
    memory_prior_mb: Callable[[Candidate], float] | None = None
    encoder: CandidateEncoder = field(init=False)
    _fits: dict[str, _Fit] = field(init=False, default_factory=dict)
    n_observations: int = field(init=False, default=0)
    _seen: list[dict[str, Any]] = field(init=False, default_factory=list)  # measured candidates' groups

    def __post_init__(self) -> None:
        self.encoder = encoder_for(self.space)

    def _offset(self, metric: str, candidate: Candidate) -> float:
        if metric == "peak_mem_mb" and self.memory_prior_mb is not None:
            return math.log(max(self.memory_prior_mb(candidate), 1e-6))
        return 0.0

    def fit(self, observations: Sequence[Observation]) -> PerformanceModel:
        """Fit every objective's model on these observations; returns self."""
        self.n_observations = sum(o.source == 0 for o in observations)
        self._seen = [o.candidate.groups() for o in observations if o.source == 0]
        for metric in METRICS:
            obs = [o for o in observations if metric in o.log_values]
            if not obs:
                self._fits.pop(metric, None)
                continue
            X = np.array([self.encoder.encode(o.candidate, o.source) for o in obs])
            y = np.array([o.log_values[metric] - self._offset(metric, o.candidate) for o in obs])
            noise = np.array(
                [
                    math.hypot(max(o.noise_sd.get(metric, _MIN_NOISE_SD), _MIN_NOISE_SD), _TRANSFER_SD * o.source)
                    for o in obs
                ]
            )
            self._fits[metric] = self._fit_one(X, y, noise, self.encoder.prior_mean(metric))
        return self

    def _fit_one(self, X: np.ndarray, y: np.ndarray, noise: np.ndarray, prior_mean: np.ndarray) -> _Fit:
        """Posterior of the weights, averaged over the (prior scale, misfit) grid by marginal likelihood.

        Marginal likelihood of y under y = Xw + e, e ~ N(0, D), w ~ N(m, P) (D, P diagonal),
        in weight space (features x features, however many observations): with the
        posterior precision A = X' D⁻¹ X + P⁻¹, b = X' D⁻¹ r and r = y − Xm,
        r' K⁻¹ r = r' D⁻¹ r − b' A⁻¹ b and log|K| = log|A| + log|D| + log|P|. Every
        (prior scale, misfit) pair of the grid at once.

        The pairs are averaged, weighted by their marginal likelihood, rather than the best
        one kept: with few measurements the data cannot tell a small prior scale from a large
        one, and keeping only the best (often the smallest) made the model sure of effects it
        had not seen — a batch slope learned at one dtype carried to another, "nothing left
        to gain" and the convergence stop after a handful of trials (issue 24's replays).
        """
        residual = y - X @ prior_mean
        prior_sd, misfit = self.encoder.hyper_grid()
        prior_var = prior_sd**2
        obs_var = noise[None, :] ** 2 + misfit[:, None] ** 2  # (G, n)
        Xd = X[None, :, :] / obs_var[:, :, None]  # (G, n, p)
        XdT = Xd.transpose(0, 2, 1)  # (G, p, n)
        precision = XdT @ X
        idx = np.arange(X.shape[1])
        precision[:, idx, idx] += 1.0 / prior_var
        L = np.linalg.cholesky(precision)  # positive definite: the prior's diagonal is in it
        b = XdT @ residual  # (G, p)
        c = np.linalg.solve(L, b[:, :, None])[:, :, 0]
        quad = (residual**2 / obs_var).sum(axis=1) - (c * c).sum(axis=1)
        log_det = (
            2.0 * np.log(np.diagonal(L, axis1=1, axis2=2)).sum(axis=1)
            + np.log(obs_var).sum(axis=1)
            + np.log(prior_var).sum(axis=1)
        )
        log_ml = -0.5 * quad - 0.5 * log_det
        w = np.exp(log_ml - log_ml.max())
        w /= w.sum()
        keep = np.flatnonzero(w >= _MIN_COMPONENT)
        w = w[keep] / w[keep].sum()
        L_inv = np.linalg.inv(L[keep])
        covs = L_inv.transpose(0, 2, 1) @ L_inv
        means = prior_mean[None, :] + (covs @ b[keep][:, :, None])[:, :, 0]
        return _Fit(w, means, covs, misfit[keep], log_ml[keep])

    def predict(self, candidates: Sequence[Candidate], *, average: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Log-scale means and standard deviations, shape (len(candidates), 3), METRICS order.

        The deviation is of the candidate's true value (weights' uncertainty plus the
        model's misfit), not of one noisy measurement. A metric never observed gets a
        mean of 0 and a huge deviation. ``average=False``: under the most likely (prior
        scale, misfit) pair alone, not the mixture — narrower while few candidates are
        measured (every scale fits a lone baseline alike, and the mixture spans them all).
        """
        X = self.encoder.encode_many(candidates)
        means = np.zeros((len(candidates), len(METRICS)))
        sds = np.full((len(candidates), len(METRICS)), 10.0)
        for j, metric in enumerate(METRICS):
            fit = self._fits.get(metric)
            if fit is None:
                continue
            offsets = np.array([self._offset(metric, c) for c in candidates])
            mean, sd = fit.predict(X, average)
            means[:, j] = mean + offsets
            sds[:, j] = sd
        if self._seen:
            extra = UNSEEN_SD**2 * (1.0 - UNSEEN_RHO ** (2 * self.distances(candidates)))
            for j, metric in enumerate(METRICS):
                if metric != "peak_mem_mb":  # memory follows the analytic model; no interaction residual
                    sds[:, j] = np.sqrt(sds[:, j] ** 2 + extra)
        return means, sds

    def distances(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """How many settings (the engine's groups) separate each candidate from the nearest one
        this study measured (0: measured)."""
        groups = [c.groups() for c in candidates]
        keys = sorted({k for g in (*self._seen, *groups) for k in g})
        codes: dict[tuple[str, Any], int] = {}  # each (setting, value) as an integer, for numpy

        def encode(rows: Sequence[dict[str, Any]]) -> np.ndarray:
            return np.array([[codes.setdefault((k, g.get(k)), len(codes)) for k in keys] for g in rows])

        seen, wanted = encode(self._seen), encode(groups)
        return (wanted[:, None, :] != seen[None, :, :]).sum(axis=2).min(axis=1)


def score_of(log_values: np.ndarray, base_log: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """The profile score (``kvopt.select.profile_score``) from log values, vectorised.

    ``log_values``: (..., 3) in METRICS order; ``base_log``: the baseline's (3,).
    """
    w = np.array([weights[m] for m in METRICS])
    return ((log_values - base_log) * _SIGNS * w).sum(axis=-1)


def score_sd_of(log_sd: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    """Standard deviation of the predicted profile score (objectives' errors independent)."""
    w = np.array([weights[m] for m in METRICS])
    return np.sqrt(((log_sd * w) ** 2).sum(axis=-1))
