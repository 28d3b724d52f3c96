"""The quality guard's knowledge: which candidates can change the model's answers, and the verdict.

A candidate is *exact by construction* when it stores the KV cache unquantized, runs the
model's own dtype, computes exact attention (eager, sdpa, flex and flash attention all
compute the same softmax attention) and is not compiled: it changes only the order of
floating-point operations, so its fidelity is not measured. Otherwise it is *lossy* (a
quantized KV cache, a lower dtype than the model's) or *checked* (torch.compile, an upcast
to float32: not lossy by design, but a different numeric path that can carry a bug).

Lossy and checked candidates get a fidelity measurement against the baseline before their
timed runs (:mod:`kvopt.engines.transformers.fidelity` runs it); :func:`violations` compares it with the
bounds (``quality.max_mean_kl``, ``quality.min_token_agreement``). Random weights cannot
judge quality: then nothing is measured, and a lossy candidate is allowed only with
``quality.allow_unverified=true``. docs/quality.md gives the definitions and the defaults' reasons.
No model runs here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvopt.attrs import FIDELITY_ATTR, QUALITY_ATTR
from kvopt.config import QualityConfig
from kvopt.space import Candidate

__all__ = [
    "QUALITY",
    "SHIPPED_TEXT",
    "EXACT",
    "LOSSY",
    "CHECKED",
    "UNVERIFIED",
    "Fidelity",
    "QualityPlan",
    "classify",
    "plan_quality",
    "violations",
    "excess",
    "quality_label",
    "quality_summary",
]

# The Optuna constraint a candidate over the quality bounds violates (value > 0).
QUALITY = "quality"
# The public-domain text fidelity prompts are cut from unless quality.prompts names a file:
# the opening of Shakespeare's Coriolanus (from Karpathy's tinyshakespeare).
SHIPPED_TEXT = Path(__file__).resolve().parent / "data" / "coriolanus.txt"

# How a candidate relates to the baseline's numerics (the ``quality`` user attr's ``kind``).
EXACT = "exact"  # exact by construction: not measured
LOSSY = "lossy"  # loses precision by design: measured (pretrained) or needs allow_unverified (random)
CHECKED = "checked"  # a different numeric path, not lossy by design: measured when weights allow
UNVERIFIED = "unverified"  # would be measured, but the weights are random: nothing to judge with


@dataclass(frozen=True)
class Fidelity:
    """How close a candidate's outputs are to the baseline's on the same prompts.

    Attributes:
        token_agreement: share of greedy tokens equal to the baseline's, position by position.
        first_divergence: the first generated position (0-based) where a prompt's tokens differ
            from the baseline's, over all prompts; None when every token agrees.
        baseline_in_candidate_top5: at that position, whether the baseline's token is in the
            candidate's top-5 (the vLLM test-suite's "close enough"); None without a divergence.
        candidate_in_baseline_top5: the other way round; None without a divergence.
        mean_kl: mean KL(baseline || candidate) of the next-token distributions, in nats,
            teacher-forced on the baseline's tokens (every position of every prompt).
        p99_kl: the 99th percentile of the same KL values.
        prompts: how many prompts; prompt_tokens and new_tokens: their lengths.
        seconds: the time the measurement took (a setup cost, never in TTFT).
    """

    token_agreement: float
    first_divergence: int | None
    baseline_in_candidate_top5: bool | None
    candidate_in_baseline_top5: bool | None
    mean_kl: float
    p99_kl: float
    prompts: int
    prompt_tokens: int
    new_tokens: int
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as stored in the ``fidelity`` user attr."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fidelity:
        """The fidelity a ``fidelity`` user attr holds."""
        return cls(**data)

    def summary(self) -> str:
        """One line for people: agreement, first divergence, KL."""
        where = (
            "never diverges" if self.first_divergence is None else f"first divergence at token {self.first_divergence}"
        )
        return f"agreement {self.token_agreement:.3f} ({where}), mean KL {self.mean_kl:.2g}, p99 KL {self.p99_kl:.2g}"


@dataclass(frozen=True)
class QualityPlan:
    """What the guard does with one candidate before anything is timed.

    Attributes:
        kind: EXACT, LOSSY, CHECKED or UNVERIFIED.
        note: one line for people (stored as the ``quality`` user attr's ``note``).
        measure: whether a fidelity measurement must run before the timed runs.
        blocked: set when the candidate must not be timed or recommended: why.
    """

    kind: str
    note: str
    measure: bool
    blocked: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as stored in the ``quality`` user attr."""
        return {"kind": self.kind, "note": self.note}


def classify(candidate: Candidate, baseline: Candidate) -> tuple[str, str]:
    """(EXACT, LOSSY or CHECKED, what makes it so) for ``candidate`` against the untuned ``baseline``.

    The engine's rules (:meth:`kvopt.space.Candidate.classify`): by default its knob table's
    lossy values; the Transformers engine also weighs the dtype against the model's own.
    """
    return candidate.classify(baseline)


def plan_quality(candidate: Candidate, baseline: Candidate, weights: str, cfg: QualityConfig) -> QualityPlan:
    """The guard's decision before timing: measure fidelity, skip it (exact, random weights), or block.

    Args:
        candidate: the candidate about to be measured.
        baseline: the untuned run (the model's own dtype, an unquantized cache).
        weights: ``pretrained`` or ``random`` (random weights cannot judge quality).
        cfg: the quality bounds and ``allow_unverified``.
    """
    kind, why = classify(candidate, baseline)
    if kind == EXACT:
        return QualityPlan(EXACT, why, measure=False)
    if weights == "pretrained":
        return QualityPlan(kind, f"{kind}: {why}; fidelity measured against the baseline", measure=True)
    note = f"quality not measured: random weights ({why})"
    if kind == LOSSY and not cfg.allow_unverified:
        return QualityPlan(
            UNVERIFIED,
            note,
            measure=False,
            blocked=f"{note}; a lossy setting is recommended only with quality.allow_unverified=true",
        )
    return QualityPlan(UNVERIFIED, note + ("; allowed by quality.allow_unverified" if kind == LOSSY else ""), False)


def violations(fidelity: Fidelity, cfg: QualityConfig) -> list[str]:
    """Each bound the fidelity breaks, one phrase each (empty: within the bounds)."""
    out = []
    if cfg.max_mean_kl is not None and fidelity.mean_kl > cfg.max_mean_kl:
        out.append(f"mean KL {fidelity.mean_kl:.3g} > quality.max_mean_kl {cfg.max_mean_kl:g}")
    if cfg.min_token_agreement is not None and fidelity.token_agreement < cfg.min_token_agreement:
        out.append(
            f"token agreement {fidelity.token_agreement:.3f} < quality.min_token_agreement {cfg.min_token_agreement:g}"
        )
    return out


def excess(fidelity: Fidelity, cfg: QualityConfig) -> float:
    """The quality constraint's value: how far past the tighter-broken bound, relative (<= 0: within)."""
    parts = [-1.0]
    if cfg.max_mean_kl is not None:
        parts.append(fidelity.mean_kl / cfg.max_mean_kl - 1.0 if cfg.max_mean_kl > 0 else fidelity.mean_kl)
    if cfg.min_token_agreement is not None and cfg.min_token_agreement > 0:
        parts.append(1.0 - fidelity.token_agreement / cfg.min_token_agreement)
    return max(parts)


def quality_label(user_attrs: Mapping[str, Any]) -> str:
    """A short cell for tables, beside the speed: the fidelity, ``exact``, or ``not measured``."""
    fidelity = user_attrs.get(FIDELITY_ATTR)
    if fidelity:
        return f"agree {fidelity['token_agreement']:.2f}, KL {fidelity['mean_kl']:.2g}"
    kind = (user_attrs.get(QUALITY_ATTR) or {}).get("kind")
    if kind == EXACT:
        return "exact"
    if kind == UNVERIFIED:
        return "not measured: random weights"
    return ""  # a study run without the guard


def quality_summary(user_attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guard's decision and the fidelity, as recommended.yaml and results.json carry them."""
    decision = user_attrs.get(QUALITY_ATTR)
    if decision is None:
        return None
    return {**decision, "fidelity": user_attrs.get(FIDELITY_ATTR)}
