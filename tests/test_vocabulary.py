"""One vocabulary: metrics described once, failure kinds stored with the trial (never parsed)."""

from __future__ import annotations

import pytest

from kvopt.attrs import FAILURE_ATTR, REASON_ATTR, Failure, failure_kind
from kvopt.config import DIRECTIONS, METRICS, SLO_KEYS
from kvopt.failures import failure_reason
from kvopt.metrics import OBJECTIVES, SIGN, slo_violations


def test_every_metric_table_derives_from_the_objectives():
    assert METRICS == ("ttft_ms", "decode_tok_s", "peak_mem_mb")
    assert DIRECTIONS == ("minimize", "maximize", "minimize")
    assert SLO_KEYS == ("max_ttft_ms", "min_decode_tok_s", "max_mem_mb")
    assert SIGN == {"ttft_ms": -1.0, "decode_tok_s": 1.0, "peak_mem_mb": -1.0}
    for metric in OBJECTIVES:
        # A ceiling on what should be low, a floor on what should be high.
        assert metric.slo_key.startswith("min_" if metric.higher_is_better else "max_")


@pytest.mark.parametrize("metric", OBJECTIVES, ids=lambda m: m.name)
def test_slo_excess_is_positive_exactly_when_the_slo_is_missed(metric):
    limit = 10.0
    worse, better = (5.0, 20.0) if metric.higher_is_better else (20.0, 5.0)
    assert metric.slo_excess(worse, limit) > 0 and metric.slo_violation(worse, limit)
    assert metric.slo_excess(better, limit) < 0 and metric.slo_violation(better, limit) is None
    assert metric.slo_excess(limit, limit) == 0 and metric.slo_violation(limit, limit) is None


def test_slo_violations_name_each_missed_slo_in_objective_order():
    values = {"ttft_ms": 12.0, "decode_tok_s": 8.0, "peak_mem_mb": 300.0}
    slo = {"max_ttft_ms": 10, "min_decode_tok_s": 10, "max_mem_mb": None}
    assert slo_violations(values, slo) == ["TTFT 12.0 ms > 10 ms", "decode 8.0 tok/s < 10 tok/s"]


def test_the_stored_failure_kind_decides_not_the_reason_text():
    # A new trial: the kind is read from its attr, whatever the reason says.
    attrs = {REASON_ATTR: "out of memory: but the kind says otherwise", FAILURE_ATTR: Failure.TIMEOUT}
    assert failure_kind(attrs) == Failure.TIMEOUT
    assert failure_kind({}) is None


@pytest.mark.parametrize(
    "reason, kind",
    [
        ("out of memory: CUDA out of memory. Tried to allocate 2.00 GiB", Failure.OUT_OF_MEMORY),
        ("interrupted by the user (Ctrl-C)", Failure.INTERRUPTED),
        ("interrupted: worker 1 (pid 12 on host) stopped during this trial", Failure.INTERRUPTED),
        ("same candidate as trial #3: ValueError: no", Failure.REPEAT),
        ("dominated by trial #0 (dynamic/sdpa/float32/b1) even at its best run", Failure.DOMINATED),
        ("trial exceeded trial.timeout_s=5 s and was killed", Failure.TIMEOUT),
        ("trial process killed by SIGKILL", Failure.CRASHED),
        ("predicted 900.0 MB > memory budget 100.0 MB (memory.budget_mb); not loaded", Failure.OVER_BUDGET),
        ("batch 4 >= batch 2, which ran out of memory with the same settings in trial #5", Failure.LARGER_THAN_OOM),
        ("ValueError: flex_attention is not supported", Failure.ERROR),
    ],
)
def test_studies_stored_before_the_kind_existed_are_read_from_their_reason(reason: str, kind: str):
    assert failure_kind({REASON_ATTR: reason}) == kind
    assert kind in Failure.ALL


def test_an_exception_becomes_a_state_a_reason_and_a_kind():
    oom = failure_reason(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 8 GB"))
    assert oom.kind == Failure.OUT_OF_MEMORY and oom.reason.startswith("out of memory: ")
    other = failure_reason(ValueError("flex_attention is not supported\nmore"))
    assert (other.state.name, other.reason, other.kind) == (
        "FAIL",
        "ValueError: flex_attention is not supported",
        Failure.ERROR,
    )
