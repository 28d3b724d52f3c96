"""The search space of any engine: knobs as data, one candidate, and how a trial samples one.

An engine declares its knobs (:class:`Knob`: name, values, kind, the condition under which
it applies, the baseline's value, which values lose accuracy) and a :class:`Candidate`
class that turns a knob assignment into that engine's settings. Everything here works on
that table alone: enumerating the candidates, sampling one with Optuna, dropping choices
that cannot run, reading a stored study back. A new knob is a line in its engine's table.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna

__all__ = [
    "Knob",
    "Candidate",
    "SearchSpace",
    "candidate_key",
    "CandidateKey",
    "KNOB_KINDS",
]

KNOB_KINDS = ("categorical", "ordinal", "boolean")

CandidateKey = tuple[tuple[str, Any], ...]


def candidate_key(params: dict[str, Any]) -> CandidateKey:
    """A candidate's identity from its Optuna parameters: equal keys, same settings."""
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Knob:
    """One setting an engine exposes to the search.

    Attributes:
        name: the Optuna parameter (stored in studies: renaming one orphans them).
        values: the values to choose from, in the order the space lists them.
        kind: ``categorical`` (no order), ``ordinal`` (ordered numbers: batch sizes, threads)
            or ``boolean``. The performance model treats ordinal knobs as log2 positions.
        baseline: the value of the untuned run (the engine's own default); None for a
            conditional knob that does not apply to the baseline.
        when: ``(knob, values)``: the knob applies only when ``knob`` takes one of ``values``;
            None: it always applies. A conditional knob follows its parent in the table.
        lossy: values that change the model's outputs (the quality guard checks them).
        whole_choice: whether a value of it can be dropped from the space as a whole choice.
    """

    name: str
    values: tuple[Any, ...]
    kind: str = "categorical"
    baseline: Any = None
    when: tuple[str, tuple[Any, ...]] | None = None
    lossy: frozenset[Any] = frozenset()
    whole_choice: bool = True

    def active(self, assigned: dict[str, Any]) -> bool:
        """Whether the knob applies, given the values of the knobs before it."""
        if self.when is None:
            return True
        parent, values = self.when
        return parent in assigned and assigned[parent] in values


class Candidate(ABC):
    """One point of an engine's search space: the settings one trial measures.

    Subclasses are frozen dataclasses of their engine's settings; the core only uses what
    is declared here. ``KNOBS``: the engine's knob table (every value it knows).
    """

    ENGINE: ClassVar[str]
    KNOBS: ClassVar[tuple[Knob, ...]]
    # Sequences decoded together (throughput counts all of them): every engine has a batch_size knob.
    batch_size: int

    @property
    @abstractmethod
    def label(self) -> str:
        """A short readable name, unique within the space."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The Optuna parameters of this candidate (conditional ones only where they apply)."""

    @classmethod
    @abstractmethod
    def from_params(cls, params: dict[str, Any]) -> Candidate:
        """The candidate stored Optuna params describe.

        Raises:
            KeyError: a parameter the engine needs is missing (a study of another space).
        """

    def as_dict(self) -> dict[str, Any]:
        """The candidate's settings that are set, as a plain mapping."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]

    def levels(self) -> dict[str, str]:
        """The performance model's categorical factors: each unconditional categorical or
        boolean knob with its conditional categorical knobs (ordinal ones are left out)."""
        params = self.params()
        out: dict[str, str] = {}
        for knob in self.KNOBS:
            if knob.kind == "ordinal" or knob.name not in params:
                continue
            root = _root(self.KNOBS, knob.name)
            if root == knob.name:
                out[root] = str(params[knob.name])
            elif root in out:
                out[root] = f"{out[root]}+{knob.name}={params[knob.name]}"
            else:  # under an ordinal knob (offload_kqv under n_gpu_layers): a factor of its own
                out[knob.name] = str(params[knob.name])
        return out

    def ordinals(self) -> dict[str, float]:
        """log2 of each ordinal knob but the batch size (0 where it does not apply)."""
        params = self.params()
        return {
            k.name: math.log2(params[k.name]) if params.get(k.name) else 0.0
            for k in self.KNOBS
            if k.kind == "ordinal" and k.name != "batch_size"
        }

    @classmethod
    def factor_order(cls, factor: str, levels: Sequence[str]) -> list[str]:
        """The order of a factor's levels as model columns (first seen, unless an engine sorts)."""
        return list(dict.fromkeys(levels))

    @classmethod
    def prior_means(cls, metric: str, prefix_share: float) -> dict[str, float]:
        """Prior means of model weights the engine knows (feature name -> log effect); none by default."""
        return {}

    def groups(self) -> dict[str, tuple[Any, ...]]:
        """Each unconditional knob with the conditional knobs under it: what "one setting" means."""
        params = self.params()
        out: dict[str, tuple[Any, ...]] = {}
        for knob in self.KNOBS:
            root = _root(self.KNOBS, knob.name)
            out[root] = (*out.get(root, ()), params.get(knob.name))
        return out

    def classify(self, baseline: Candidate) -> tuple[str, str]:
        """("exact", "lossy" or "checked", what makes it so) for the quality guard (see kvopt.quality).

        By default from the knob table: a value listed in its knob's ``lossy`` set makes the
        candidate lossy; anything else is exact. Engines with subtler rules override it.
        """
        lossy = [
            f"{k.name}={self.params()[k.name]}"
            for k in self.KNOBS
            if k.name in self.params() and self.params()[k.name] in k.lossy
        ]
        if lossy:
            return "lossy", ", ".join(lossy)
        return "exact", "exact by construction: no setting that changes the outputs"

    def fidelity_params(self) -> dict[str, Any]:
        """The settings the model's outputs depend on: two candidates equal here answer alike
        (the quality guard measures one of them). By default every parameter but the batch size."""
        return {k: v for k, v in self.params().items() if k != "batch_size"}

    def changes_from(self, baseline: Candidate) -> int:
        """How many of the baseline's parameters this candidate changes (or adds)."""
        base = baseline.params()
        return sum(1 for k, v in self.params().items() if base.get(k) != v)


def _root(knobs: Sequence[Knob], name: str) -> str:
    """The unconditional knob a conditional one hangs under."""
    by_name = {k.name: k for k in knobs}
    knob = by_name[name]
    while knob.when is not None:
        knob = by_name[knob.when[0]]
    return knob.name


@dataclass
class SearchSpace:
    """The choices left after probing (each knob's kept values), plus what was dropped and why.

    Attributes:
        knobs: the engine's knobs with the values this space keeps (a knob with no value
            left is not sampled, and a value of its parent that needs it is gone too).
        baseline: the untuned run; its values always stay.
        candidate_type: the engine's :class:`Candidate` class.
        prefix_share: the share of the trials' prompt every request shares (0: none).
        dropped: ``"param=value"`` (a whole choice) or a candidate's label -> one-line reason
            it is not measured here: it cannot run, cannot fit, or cannot be recommended.
        excluded: candidates the study must never measure although their choices stay (some of a
            choice's combinations fit, others not; or a stored study's distributions hold the
            choice): candidate key -> reason. candidates() and size leave them out.
    """

    knobs: tuple[Knob, ...]
    baseline: Candidate
    candidate_type: type[Candidate]
    prefix_share: float = 0.0
    dropped: dict[str, str] = field(default_factory=dict)
    excluded: dict[CandidateKey, str] = field(default_factory=dict)

    @property
    def engine(self) -> str:
        """The engine whose candidates these are."""
        return self.candidate_type.ENGINE

    def knob(self, name: str) -> Knob:
        """The knob called ``name``."""
        for knob in self.knobs:
            if knob.name == name:
                return knob
        raise KeyError(name)

    def values(self, name: str) -> list[Any]:
        """The values this space keeps for knob ``name`` (empty for a knob it does not have)."""
        return next((list(k.values) for k in self.knobs if k.name == name), [])

    def offers(self, name: str, value: Any) -> bool:
        """Whether knob ``name`` keeps ``value`` and applies to some candidate of the space."""
        return any(c.params().get(name, _ABSENT) == value for c in self.all_candidates())

    def choices(self) -> dict[str, list[Any]]:
        """The unconditional knobs' choices."""
        return {k.name: list(k.values) for k in self.knobs if k.when is None and k.values}

    def all_choices(self) -> dict[str, list[Any]]:
        """Every knob that applies to some candidate, conditional ones included (the grid sampler, checks)."""
        present = {name for c in self.all_candidates() for name in c.params()}
        ordered = [k for k in self.knobs if k.when is None] + [k for k in self.knobs if k.when is not None]
        return {k.name: list(k.values) for k in ordered if k.name in present}

    def _assignments(self, index: int, assigned: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every assignment of the knobs from ``index`` on, depth-first in table order."""
        if index == len(self.knobs):
            yield dict(assigned)
            return
        knob = self.knobs[index]
        if not knob.active(assigned) or not knob.values:  # e.g. a backend that takes no nbits
            yield from self._assignments(index + 1, assigned)
            return
        for value in knob.values:
            assigned[knob.name] = value
            yield from self._assignments(index + 1, assigned)
            del assigned[knob.name]

    def all_candidates(self) -> list[Candidate]:
        """Every combination of the space's choices (conditional knobs expanded), once each, excluded ones too."""
        seen: dict[CandidateKey, Candidate] = {}
        for params in self._assignments(0, {}):
            candidate = self.candidate_type.from_params(params)
            seen.setdefault(candidate_key(candidate.params()), candidate)
        return list(seen.values())

    def candidates(self) -> list[Candidate]:
        """Every distinct candidate the study may measure: the combinations less the excluded ones."""
        return [c for c in self.all_candidates() if candidate_key(c.params()) not in self.excluded]

    @property
    def size(self) -> int:
        """How many distinct candidates the study may measure."""
        return len(self.candidates())

    def excluded_reason(self, candidate: Candidate) -> str | None:
        """Why the study must not measure ``candidate`` (dropped before the study), or None."""
        return self.excluded.get(candidate_key(candidate.params()))

    def drop(self, reasons: dict[Candidate, str]) -> SearchSpace:
        """This space without the candidates ``reasons`` names, each kept with its reason.

        A value of a knob none of whose candidates is left goes as a whole choice
        (``dropped["param=value"]``, out of the Optuna distributions), with the reason of
        its candidate nearest the baseline; the baseline's own values always stay. The other
        candidates are excluded one by one (``excluded``, ``dropped[label]``). The baseline
        is never dropped: every gain is measured against it.
        """
        base_key = candidate_key(self.baseline.params())
        out = {candidate_key(c.params()): (c, why) for c, why in reasons.items()}
        out.pop(base_key, None)
        everything = self.all_candidates()
        whole: dict[str, str] = {}

        def gone(c: Candidate) -> bool:  # already out with a whole choice
            return any(f"{k}={v}" in whole for k, v in c.params().items())

        # Table order: a parent's value goes first, so its conditional knobs need no line of their own.
        for knob in self.knobs:
            if not knob.whole_choice:
                continue
            for value in knob.values:
                with_value = [c for c in everything if c.params().get(knob.name, _ABSENT) == value]
                if (
                    not with_value
                    or value == self.baseline.params().get(knob.name)
                    or any(candidate_key(c.params()) not in out for c in with_value)
                    or all(gone(c) for c in with_value)
                ):
                    continue
                nearest = min(with_value, key=lambda c: c.changes_from(self.baseline))
                whole[f"{knob.name}={value}"] = out[candidate_key(nearest.params())][1]
        space = self.without_choices(whole)
        left = {candidate_key(c.params()) for c in space.all_candidates()}
        for key, (candidate, why) in out.items():
            if key in left:
                space.excluded[key] = why
                space.dropped[candidate.label] = why
        return space

    def without_choices(self, reasons: dict[str, str]) -> SearchSpace:
        """This space without whole choices, ``{"param=value": reason}``; the baseline's values stay."""
        base = {f"{k}={v}" for k, v in self.baseline.params().items()}
        names = {k.name for k in self.knobs if k.whole_choice}
        reasons = {k: why for k, why in reasons.items() if k.partition("=")[0] in names and k not in base}
        knobs = tuple(
            dataclasses.replace(k, values=tuple(v for v in k.values if f"{k.name}={v}" not in reasons))
            for k in self.knobs
        )
        emptied = {new.name for old, new in zip(self.knobs, knobs) if old.values and not new.values}
        return dataclasses.replace(
            self, knobs=_prune_empty(knobs, emptied), dropped={**self.dropped, **reasons}, excluded=dict(self.excluded)
        )

    def keep_stored_choice(self, param: str, stored: list[Any]) -> SearchSpace:
        """This space with ``param``'s choices as a stored study has them, its dropped values excluded.

        A study stored with a choice that is dropped here (a lossy dtype before random weights
        were screened, a batch over today's budget) still opens: Optuna requires the same
        distribution for a parameter throughout a study, so the value stays in the distribution
        and every candidate with it is excluded, with the reason it was dropped.
        """
        kept = self.values(param)
        knobs = tuple(dataclasses.replace(k, values=tuple(stored)) if k.name == param else k for k in self.knobs)
        space = dataclasses.replace(self, knobs=knobs, excluded=dict(self.excluded))
        for candidate in space.all_candidates():
            value = candidate.params().get(param)
            why = self.dropped.get(f"{param}={value}")
            if value is not None and value not in kept and why is not None:
                space.excluded[candidate_key(candidate.params())] = why
        return space

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """Every parameter as Optuna's categorical distribution (to check a stored study fits this space)."""
        return {
            name: optuna.distributions.CategoricalDistribution(values) for name, values in self.all_choices().items()
        }

    def choice_param(self, param: str) -> bool:
        """Whether ``param`` is a choice a stored study's distribution can keep (see keep_stored_choice)."""
        return any(k.name == param and k.whole_choice for k in self.knobs)

    def make_candidate(self, params: dict[str, Any]) -> Candidate:
        """The candidate stored Optuna params describe (KeyError: params of another space)."""
        return self.candidate_type.from_params(params)

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Sample the unconditional knobs in table order, then the conditional ones that apply."""
        params: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.when is None and knob.values:  # a knob with no value left is not the space's
                params[knob.name] = trial.suggest_categorical(knob.name, list(knob.values))
        for knob in self.knobs:
            if knob.when is not None and knob.values and knob.active(params):
                params[knob.name] = trial.suggest_categorical(knob.name, list(knob.values))
        return self.make_candidate(params)


_ABSENT = object()  # a parameter the candidate does not take


def _prune_empty(knobs: tuple[Knob, ...], emptied: set[str]) -> tuple[Knob, ...]:
    """Drop a parent's value whose conditional knob ``emptied`` left without values (it could not be sampled)."""
    out = list(knobs)
    for knob in list(out):
        if knob.when is None or knob.name not in emptied:
            continue
        parent, needs = knob.when
        for j, p in enumerate(out):
            if p.name == parent:
                out[j] = dataclasses.replace(p, values=tuple(v for v in p.values if v not in needs))
    return tuple(out)
