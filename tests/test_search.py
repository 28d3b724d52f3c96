"""kvopt's profile-directed search: ordinal encoding, learning from every trial, the
convergence stop, finalists that can still win, bounded calls and the paired dtype probe."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial

from conftest import model_config, profile_config, transformers_engine
from kvopt.config import MeasureConfig
from kvopt.confirm import choose_finalists
from kvopt.engines.transformers.candidate import Candidate, transformers_space
from kvopt.engines.transformers.probe import dtype_slowdown
from kvopt.failures import CallTooSlow, failure_reason
from kvopt.protocol import _refuse_if_too_slow, measure_candidate
from kvopt.sampler import (
    ProfileSampler,
    check_converged,
    convergence,
    fit_model,
    predict_call_seconds,
    read_study,
)
from kvopt.select import Result, collect_results, recommend
from kvopt.space import SearchSpace, candidate_key
from kvopt.surrogate import CandidateEncoder, Observation, PerformanceModel

BASE = Candidate("dynamic", "sdpa", "float32", 1)
PROFILE = profile_config("ci-micro")


def space(**kw) -> SearchSpace:
    args = dict(
        cache_implementation=["dynamic", "static"],
        attn_implementation=["sdpa", "eager"],
        dtype=["float32"],
        batch_size=[1, 2, 4, 8],
        baseline=BASE,
    )
    args.update(kw)
    return transformers_space(**args)


def truth(c: Candidate) -> tuple[float, float, float]:
    """A smooth, made-up machine: batch raises throughput a lot and TTFT a little; eager is slower."""
    slow = 1.3 if c.attn_implementation == "eager" else 1.0
    static = 0.9 if c.cache_implementation == "static" else 1.0
    ttft = 10.0 * c.batch_size**0.3 * slow * static
    tput = 100.0 * c.batch_size**0.9 / slow
    mem = 100.0 + 10.0 * c.batch_size
    return ttft, tput, mem


def add_complete(study: optuna.Study, sp: SearchSpace, c: Candidate, values=None, **attrs) -> None:
    dists = {k: v for k, v in sp.distributions().items() if k in c.params()}
    study.add_trial(
        create_trial(
            params=c.params(),
            distributions=dists,
            values=list(values or truth(c)),
            user_attrs={"candidate": c.label, **attrs},
        )
    )


def new_study() -> optuna.Study:
    return optuna.create_study(directions=["minimize", "maximize", "minimize"])


def test_batch_size_and_nbits_are_ordinal_features() -> None:
    sp = space(cache_implementation=["dynamic", "quantized"], quantized_backends=["quanto"], quantized_nbits=[2, 4])
    enc = CandidateEncoder(sp)
    x = enc.names.index("log2_batch")
    xs = [enc.encode(Candidate("dynamic", "sdpa", "float32", b))[x] for b in (1, 2, 4, 8)]
    assert xs == sorted(xs) and xs[0] == 0.0 and xs[-1] == pytest.approx(1.0)
    assert np.diff(xs) == pytest.approx([1 / 3] * 3)  # equal steps per doubling: an order, not labels
    nb = enc.names.index("log2_nbits")
    two, four = (enc.encode(Candidate("quantized", "sdpa", "float32", 1, "quanto", n))[nb] for n in (2, 4))
    assert two < four
    # A model told only batch 1 and 8 places batch 2 and 4 in between, in order.
    obs = [
        Observation(Candidate("dynamic", "sdpa", "float32", b), {"ttft_ms": math.log(10.0 * b)}, {"ttft_ms": 0.02})
        for b in (1, 8)
    ]
    means, _ = fit_model(sp, obs).predict([Candidate("dynamic", "sdpa", "float32", b) for b in (1, 2, 4, 8)])
    assert list(means[:, 0]) == sorted(means[:, 0])


def test_a_batch_slope_seen_at_one_dtype_stays_uncertain_at_another() -> None:
    # Every level has its own batch slope (the baseline's too): batches measured at bfloat16
    # say little about float32's, so float32 at batch 8 stays uncertain, worth measuring.
    sp = space(cache_implementation=["dynamic"], attn_implementation=["sdpa"], dtype=["float32", "bfloat16"])
    enc = CandidateEncoder(sp)
    assert {"log2_batch*dtype=float32", "log2_batch*dtype=bfloat16"} <= set(enc.names)
    assert "log2_batch*cache=dynamic" not in enc.names  # a setting with one level: the shared slope is its own

    def obs(dtype: str, b: int, ttft: float) -> Observation:
        return Observation(Candidate("dynamic", "sdpa", dtype, b), {"ttft_ms": math.log(ttft)}, {"ttft_ms": 0.02})

    seen = [obs("float32", 1, 10.0)] + [obs("bfloat16", b, 10.0 * b) for b in (1, 2, 4, 8)]
    at8 = [Candidate("dynamic", "sdpa", d, 8) for d in ("float32", "bfloat16")]
    _, sds = fit_model(sp, seen).predict(at8)
    assert sds[0, 0] > 4 * sds[1, 0]
    # Once float32 at batch 8 is measured (flat), batch 4 is placed by float32's own slope.
    means, _ = fit_model(sp, [*seen, obs("float32", 8, 10.0)]).predict([Candidate("dynamic", "sdpa", "float32", 4)])
    assert abs(means[0, 0] - math.log(10.0)) < 0.2


def test_an_ordinal_knob_interacts_with_the_batch() -> None:
    # An ordinal knob's effect measured at one batch says little about another batch (on the
    # llama.cpp grid one prefill thread paid off only with small batches): ordinal knobs get
    # interactions with the batch and each other, 0 at the baseline's value.
    sp = space(cache_implementation=["dynamic", "quantized"], quantized_backends=["quanto"], quantized_nbits=[2, 4])
    enc = CandidateEncoder(sp)
    nbits = "quantized_nbits_quanto"
    assert f"log2_batch*{nbits}" in enc.names

    def q(n: int, b: int) -> Candidate:
        return Candidate("quantized", "sdpa", "float32", b, "quanto", n)

    col = enc.names.index(f"log2_batch*{nbits}")
    assert enc.encode(q(2, 1))[col] == 0.0 and enc.encode(q(2, 8))[col] != enc.encode(q(4, 8))[col]

    def obs(c: Candidate, ttft: float) -> Observation:
        return Observation(c, {"ttft_ms": math.log(ttft)}, {"ttft_ms": 0.02})

    # 4 bits cost twice 2 bits' TTFT at batch 1, nothing at batch 8: the effect shrinks with the batch.
    seen = [obs(BASE, 10.0), *(obs(q(2, b), 8.0 * b**0.9) for b in (1, 2, 8))]
    seen += [obs(q(4, b), 8.0 * b**0.9 * 2 ** (1 - math.log2(b) / 3)) for b in (1, 2, 8)]
    means, _ = fit_model(sp, seen).predict([q(2, 1), q(4, 1), q(2, 4), q(4, 4)])
    at1, at4 = means[1, 0] - means[0, 0], means[3, 0] - means[2, 0]
    assert at1 - at4 > 0.25, (at1, at4)  # a main effect alone predicts one effect at every batch


def test_a_candidate_far_from_everything_measured_stays_uncertain() -> None:
    # Interactions of three settings are beyond main effects and pairs: the farther an unmeasured
    # candidate lies from the nearest measured one (settings changed), the wider its timings' band.
    sp = space(dtype=["float32", "bfloat16"])
    seen = [
        Observation(c, dict(zip(("ttft_ms", "decode_tok_s"), map(math.log, truth(c)[:2]))), {})
        for c in (
            BASE,
            Candidate("static", "sdpa", "float32", 1),
            Candidate("dynamic", "eager", "float32", 1),
            Candidate("dynamic", "sdpa", "bfloat16", 1),
            Candidate("dynamic", "sdpa", "float32", 8),
        )
    ]
    model = fit_model(sp, seen)
    near, far = Candidate("static", "sdpa", "float32", 8), Candidate("static", "eager", "bfloat16", 8)
    assert list(model.distances([BASE, near, far])) == [0, 1, 3]
    _, sds = model.predict([BASE, near, far])
    assert sds[0, 0] < sds[1, 0] < sds[2, 0] and sds[1, 1] < sds[2, 1]  # measured: no residual left


def test_the_fit_averages_the_exact_posteriors_by_marginal_likelihood() -> None:
    # Weight space (features x features) gives the same marginal likelihood and posterior as
    # the observation-space formulas, and every (prior scale, misfit) pair weighs by it.
    sp = space()
    model = PerformanceModel(sp)
    enc = model.encoder
    rng = np.random.default_rng(0)
    cands = sp.candidates()
    X = enc.encode_many(cands[:9])
    y = rng.normal(size=9)
    noise = rng.uniform(0.02, 0.1, size=9)
    prior = enc.prior_mean("ttft_ms")
    fit = model._fit_one(X, y, noise, prior)
    prior_sd, misfit = enc.hyper_grid()
    log_ml, posts = [], []
    for sd, m in zip(prior_sd, misfit):
        K = (X * sd**2) @ X.T + np.diag(noise**2 + m**2)
        r = y - X @ prior
        _, logdet = np.linalg.slogdet(K)
        log_ml.append(-0.5 * r @ np.linalg.solve(K, r) - 0.5 * logdet)
        gain = (X * sd**2).T @ np.linalg.inv(K)
        posts.append(prior + gain @ r)
    w = np.exp(np.array(log_ml) - max(log_ml))
    w /= w.sum()
    assert len(fit.weights) > 1 and fit.weights.sum() == pytest.approx(1.0)
    kept = np.flatnonzero(w >= 1e-3)
    assert fit.weights == pytest.approx(w[kept] / w[kept].sum(), rel=1e-6)
    assert fit.means == pytest.approx(np.array(posts)[kept], abs=1e-8)
    # The prediction is the mixture's (its mean, and a spread no narrower than its narrowest
    # component's); average=False is the most likely pair's alone.
    mean, sd = fit.predict(X[:1])
    assert mean[0] == pytest.approx(float(fit.weights @ (fit.means @ X[0])))
    sds = [math.sqrt(X[0] @ c @ X[0] + m**2) for c, m in zip(fit.covs, fit.misfit_sd)]
    assert sd[0] >= min(sds) - 1e-12
    top = int(np.argmax(fit.weights))
    mean, sd = fit.predict(X[:1], average=False)
    assert mean[0] == pytest.approx(float(fit.means[top] @ X[0])) and sd[0] == pytest.approx(sds[top])


def test_the_sampler_drives_a_real_study_and_never_repeats() -> None:
    sp = space()
    sampler = ProfileSampler(sp, PROFILE, seed=0)
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"], sampler=sampler)
    study.enqueue_trial(BASE.params(), user_attrs={"baseline": True})
    seen = []

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        c = sp.suggest(trial)
        seen.append(candidate_key(c.params()))
        return truth(c)

    study.optimize(objective, n_trials=sp.size)
    assert len(set(seen)) == sp.size  # every candidate once, none twice
    chosen = [t for t in study.trials if t.number in sampler.last_choice]
    assert chosen and all(sampler.last_choice[t.number] for t in chosen)
    # Profile-directed: the best candidate of this made-up machine is among the first few.
    best = max(
        sp.candidates(),
        key=lambda c: -0.4 * math.log(truth(c)[0]) + 0.4 * math.log(truth(c)[1]) - 0.2 * math.log(truth(c)[2]),
    )
    assert seen.index(candidate_key(best.params())) < sp.size // 2


def test_pruned_and_failed_trials_feed_the_sampler() -> None:
    sp = space()
    study = new_study()
    add_complete(study, sp, BASE, baseline=True)
    oom = Candidate("static", "sdpa", "float32", 2, compile=False)
    dists = {k: v for k, v in sp.distributions().items() if k in oom.params()}
    study.add_trial(
        create_trial(
            params=oom.params(),
            distributions=dists,
            state=TrialState.PRUNED,
            user_attrs={"reason": "out of memory: CUDA", "constraints": {"runs": 1.0}},
            system_attrs={"constraints:runs": 1.0},
        )
    )
    early = Candidate("dynamic", "eager", "float32", 4)
    early_dists = {k: v for k, v in sp.distributions().items() if k in early.params()}
    study.add_trial(
        create_trial(
            params=early.params(),
            distributions=early_dists,
            state=TrialState.PRUNED,
            user_attrs={
                "reason": "dominated by trial #0",
                "ttft_ms_stats": {"median": 20.0, "ci_low": 18, "ci_high": 22},
                "decode_tok_s_stats": {"median": 250.0, "ci_low": 240, "ci_high": 260},
                "peak_mem_mb": 140.0,
            },
        )
    )
    state = read_study(study, sp)
    larger = {candidate_key(Candidate("static", "sdpa", "float32", b, compile=False).params()) for b in (2, 4, 8)}
    assert larger <= state.cannot_run  # the failure and every larger batch of the same settings
    assert candidate_key(early.params()) in state.partial
    partial = [o for o in state.observations if o.candidate == early]
    assert partial and partial[0].log_values["ttft_ms"] == pytest.approx(math.log(20.0))
    assert partial[0].noise_sd["ttft_ms"] > 0.1  # a median of few runs counts for less
    sampler = ProfileSampler(sp, PROFILE, seed=1)
    proposed = set()
    for n in range(10):
        choice = sampler.choose(study, 100 + n)
        if choice is None:
            break
        proposed.add(candidate_key(choice[0].params()))
        add_complete(study, sp, choice[0])
    assert not proposed & (larger | {candidate_key(early.params())})


def test_convergence_stops_only_when_no_candidate_can_still_win() -> None:
    sp = space()
    study = new_study()
    add_complete(study, sp, BASE, baseline=True)
    for c in (
        Candidate("dynamic", "sdpa", "float32", 2),
        Candidate("static", "sdpa", "float32", 1),
        Candidate("dynamic", "eager", "float32", 1),
    ):
        add_complete(study, sp, c)
    # Batch helps on this machine and batch 4 and 8 are unmeasured: they can still win.
    assert check_converged(study, sp, PROFILE) is None
    for c in sp.candidates():
        if c.batch_size >= 4 and c.attn_implementation == "sdpa":
            add_complete(study, sp, c)
    # Eager measured at batch 1 only: how it scales with batch is unknown, static/eager/b8 can still win.
    stop = check_converged(study, sp, PROFILE)
    assert stop is None
    add_complete(study, sp, Candidate("dynamic", "eager", "float32", 8))
    stop = check_converged(study, sp, PROFILE)
    assert stop is not None and "static/sdpa/float32/b8" in str(stop)
    assert str(stop).startswith("converged (best profile score")
    # The rule itself: a best measured far above everything predicted stops; a close one does not.
    state = read_study(study, sp)
    model = fit_model(sp, state.observations)
    assert convergence(state, sp, PROFILE, model, z=1.645) is not None
    assert convergence(state, sp, PROFILE, model, z=50.0) is None  # a wide band: anything can still win


def test_once_the_answer_is_known_the_sampler_extends_the_front() -> None:
    """A study that runs on past the stop rule (study.converge=false, a trial cap, other workers)
    spends its trials on the Pareto front: the profile's answer is known."""
    sp = space()
    study = new_study()
    add_complete(study, sp, BASE, baseline=True)
    for c in sp.candidates():
        if c != BASE and (c.attn_implementation == "sdpa" or c.batch_size == 8):
            add_complete(study, sp, c)
    assert len(study.trials) % 4 != 3  # not a regular front turn (every 4th trial from the 8th)
    assert check_converged(study, sp, PROFILE) is not None
    sampler = ProfileSampler(sp, PROFILE, seed=0)
    chosen = sampler.choose(study, len(study.trials))
    assert chosen is not None
    candidate, why = chosen
    assert why.startswith("front:") and "the profile's answer is known" in why, why
    assert candidate_key(candidate.params()) not in {candidate_key(t.params) for t in study.trials}
    # Before the answer is known the same sampler looks for the profile's best.
    early = new_study()
    add_complete(early, sp, BASE, baseline=True)
    add_complete(early, sp, Candidate("dynamic", "sdpa", "float32", 2))
    assert sampler.choose(early, 2)[1].startswith("profile")


def test_finalists_are_only_candidates_that_can_still_win() -> None:
    def result(n: int, ttft: float, tput: float, ci: float, baseline: bool = False) -> Result:
        stats = lambda v: {"median": v, "ci_low": v * (1 - ci), "ci_high": v * (1 + ci)}  # noqa: E731
        return Result(
            n,
            {"batch_size": n + 1},
            f"c{n}",
            {"ttft_ms": ttft, "decode_tok_s": tput, "peak_mem_mb": 100.0},
            baseline,
            {"ttft_ms_stats": stats(ttft), "decode_tok_s_stats": stats(tput)},
        )

    base = result(0, 10.0, 100.0, 0.02, baseline=True)
    best = result(1, 8.0, 150.0, 0.05)
    close = result(2, 8.2, 145.0, 0.05)  # within the best's noise
    far = result(3, 30.0, 60.0, 0.05)  # cannot win: its band lies wholly below the best's
    finalists = choose_finalists([base, best, close, far], best, PROFILE, top_k=3)
    assert [r.number for r in finalists] == [1, 2, 0]


def test_a_call_predicted_far_past_the_budget_is_skipped_with_its_reason() -> None:
    sp = space()
    study = new_study()
    slow = (60_000.0, 1.0, 100.0)  # a minute to the first token at batch 1
    add_complete(study, sp, BASE, values=slow, baseline=True)
    low, typical, n = predict_call_seconds(study, sp, Candidate("dynamic", "sdpa", "float32", 8), new_tokens=8)
    assert n == 1 and low > 60.0 and typical >= low
    from kvopt.engines.transformers.workload import Workload
    from kvopt.trial import Objective

    objective = Objective(
        sp,
        transformers_engine(),
        Workload(32, 8),
        warmup=1,
        repetitions=3,
        seed=0,
        measure=MeasureConfig(max_seconds=20.0),
    )
    trial = study.ask({k: v for k, v in sp.distributions().items() if k in BASE.params()})
    skipped = objective._too_slow(trial, Candidate("dynamic", "sdpa", "float32", 8))
    assert skipped is not None
    reason, kind = skipped
    assert kind == "too_slow" and reason.startswith("too slow: one generate call predicted")
    assert "measure.max_seconds (60 s)" in reason
    # Measured, not predicted: a first call past the limit ends the measurement as PRUNED.
    with pytest.raises(CallTooSlow) as info:
        _refuse_if_too_slow(75.0, MeasureConfig(max_seconds=20.0))
    state, text, kind = failure_reason(info.value)
    assert state == TrialState.PRUNED and text.startswith("too slow: its first generate call took 75.0 s")
    assert kind == "too_slow"
    _refuse_if_too_slow(59.0, MeasureConfig(max_seconds=20.0))  # within 3x: measured as usual


def test_the_baseline_is_measured_however_slow_its_first_call() -> None:
    # A budget no call can meet: any candidate is refused after its first call, but the
    # baseline (bounded=False) is measured, or the study would have no gain to report.
    from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
    from kvopt.engines.transformers.workload import Workload

    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), torch.device("cpu"), 0)
    loaded, _ = loader.get("float32", "sdpa")
    budget = MeasureConfig(max_seconds=1e-9, max_repetitions=3)
    args = (transformers_engine(), loaded, BASE, Workload(16, 4))
    with pytest.raises(CallTooSlow) as info:
        measure_candidate(*args, warmup=1, repetitions=3, seed=0, measure=budget)
    # The refused candidate's first call was cut at the limit, right after its first token.
    assert "after 1 of 4 new tokens; stopped there" in str(info.value)
    measured = measure_candidate(*args, warmup=1, repetitions=3, seed=0, measure=budget, bounded=False)
    assert len(measured.ttft_ms) >= 1 and measured.values[1] > 0


def test_a_deadline_ends_a_generate_call_early_and_says_so() -> None:
    from kvopt.engines.transformers.generation import timed_generate
    from kvopt.engines.transformers.loading import ModelLoader, WeightsSource
    from kvopt.engines.transformers.workload import Workload, make_inputs

    loader = ModelLoader(model_config("tiny-gpt2"), WeightsSource("random", "test"), torch.device("cpu"), 0)
    model = loader.get("float32", "sdpa")[0].model
    inputs = make_inputs(Workload(16, 6), 1, model.config.vocab_size, 0, torch.device("cpu"))
    cut = timed_generate(model, inputs, BASE, 6, torch.device("cpu"), deadline_s=0.0)
    assert cut.cut_by_deadline and cut.new_tokens == 1
    whole = timed_generate(model, inputs, BASE, 6, torch.device("cpu"), deadline_s=600.0)
    assert not whole.cut_by_deadline and whole.new_tokens == 6


@pytest.mark.slow
def test_the_dtype_probe_decides_alike_beside_a_cpu_burning_process() -> None:
    llama = model_config("tiny-llama")
    quiet = dtype_slowdown(llama, "float32", "float32", torch.device("cpu"))
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = dtype_slowdown(llama, "float32", "float32", torch.device("cpu"))
    finally:
        burner.kill()
        burner.wait()
    # The same dtype on both sides: paired ratios stay near 1 however busy the machine is,
    # so a limit of 3x keeps it both times.
    assert 1 / 3 < quiet < 3 and 1 / 3 < busy < 3


def test_the_default_sampler_is_the_profile_sampler() -> None:
    import yaml

    from conftest import CONF

    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    assert {"sampler": "profile"} in defaults


@pytest.mark.slow
def test_warm_start_from_a_study_that_is_not_there_is_refused_before_any_work(run_cli, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'kvopt.db'}"
    proc = run_cli("model=tiny-gpt2", "profile=ci-micro", f"storage.url={url}", "study.warm_start=nope")
    assert proc.returncode == 2, proc.stderr
    assert "study.warm_start: got 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("outputs/*/*/results.json"))  # nothing written


@pytest.mark.slow
def test_warm_start_from_another_study_tries_its_best_first(run_cli, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'kvopt.db'}"
    space = ["search_space.dtype=[float32]", "search_space.cache_implementation=[dynamic,static]", "confirm.rounds=0"]
    first = run_cli(
        "model=tiny-gpt2", "profile=ci-micro", f"storage.url={url}", "study.name=old", "study.n_trials=4", *space
    )
    assert first.returncode == 0, first.stderr
    old = optuna.load_study(study_name="old", storage=url)
    assert [t for t in old.trials if t.state == TrialState.COMPLETE]
    second = run_cli(
        "model=tiny-gpt2",
        "profile=ci-micro",
        f"storage.url={url}",
        "study.name=new",
        "study.n_trials=2",
        "study.warm_start=old",
        *space,
    )
    assert second.returncode == 0, second.stderr
    assert "warm start    old:" in second.stdout
    new = optuna.load_study(study_name="new", storage=url).trials
    assert new[0].user_attrs.get("baseline")
    best = recommend(collect_results(old), PROFILE)
    assert best is not None
    if best.result.is_baseline:
        # The other study's best is the baseline, which this study measures first anyway: the
        # sampler goes on from there (the timings of a tiny model decide which case a run is).
        assert new[1].user_attrs.get("chosen_because", "").startswith("profile")
    else:
        assert new[1].user_attrs.get("chosen_because") == "warm start: the other study's profile-best"


def test_confirmation_keeps_the_baseline_unless_a_gain_is_shown_and_settles_ties_alike() -> None:
    from kvopt.confirm import decide, paired_scores

    def scored(samples: dict[int, dict[str, list[float]]]) -> dict[int, list[float]]:
        # decide takes each finalist's per-round score against the same round's baseline (#0).
        return {n: paired_scores(v, samples[0], 1.0, PROFILE.weights) for n, v in samples.items()}

    def result(n: int, params: dict, baseline: bool = False) -> Result:
        return Result(n, params, f"c{n}", {"ttft_ms": 10.0, "decode_tok_s": 100.0, "peak_mem_mb": 100.0}, baseline)

    base = result(0, {"cache_implementation": "dynamic", "dtype": "float32", "batch_size": 1}, baseline=True)
    simple = result(1, {"cache_implementation": "dynamic", "dtype": "bfloat16", "batch_size": 1})
    double = result(2, {"cache_implementation": "static", "dtype": "bfloat16", "batch_size": 1})
    rounds = 6
    flat = {"ttft_ms": [10.0] * rounds, "decode_tok_s": [100.0] * rounds}
    noisy = {"ttft_ms": [9.0, 11.0, 9.5, 10.5, 9.8, 10.2], "decode_tok_s": [100.0] * rounds}
    decision = decide([simple, base], scored({0: flat, 1: noisy}), base, PROFILE, 0.0, rounds)
    assert decision.chosen is base and not decision.confirmed  # no proven gain: cannot tell it from the baseline
    assert "keeping the baseline" in decision.notes[-1] or "could not separate" in decision.notes[-1]
    # Both clearly faster than the baseline, within each other's noise; the busier change
    # has the higher median this time, yet the simpler one is kept (and the tie set is said).
    faster = {"ttft_ms": [5.0, 5.2, 4.9, 5.1, 5.0, 5.05], "decode_tok_s": [100.0] * rounds}
    also = {"ttft_ms": [4.9, 5.3, 4.8, 5.2, 4.95, 5.0], "decode_tok_s": [100.0] * rounds}
    decision = decide([double, simple, base], scored({0: flat, 1: faster, 2: also}), base, PROFILE, 0.0, rounds)
    assert decision.chosen is simple and decision.confirmed
    assert {r.number for r in decision.tie_set} == {1, 2} and "tie set" in decision.notes[0]
    # A gain the rounds can tell apart wins even if it changes more.
    much = {"ttft_ms": [2.0] * rounds, "decode_tok_s": [100.0] * rounds}
    decision = decide([double, simple, base], scored({0: flat, 1: faster, 2: much}), base, PROFILE, 0.0, rounds)
    assert decision.chosen is double and decision.confirmed
