"""Settings ready to paste: ``recommended.yaml`` (machine-readable) and ``recommended.py``.

The engine that ran the study writes both (:meth:`kvopt.engines.base.Engine.settings_entry`
and ``settings_script``), the same source as the terminal's snippet, so what a user pastes
is what kvopt measured. ``recommended.py`` needs only the engine's own libraries: it must
run where kvopt is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kvopt.config import ModelConfig
from kvopt.engines import DEFAULT_ENGINE, engine_class
from kvopt.engines.base import ScriptContext
from kvopt.metrics import METRICS
from kvopt.paths import write_text_atomic
from kvopt.quality import quality_summary
from kvopt.select import Recommendation, Result, gains_pct
from kvopt.workload import Workload

if TYPE_CHECKING:
    from kvopt.stored import StoredStudy

__all__ = [
    "StudySettings",
    "plain",
    "alternatives",
    "settings_document",
    "settings_script",
    "write_settings",
]

# Which front member answers "I now care only about X", and how to pick it.
_EXTREMES = {
    "lowest_ttft": ("ttft_ms", min),
    "highest_throughput": ("decode_tok_s", max),
    "lowest_memory": ("peak_mem_mb", min),
}


def plain(value: Any) -> Any:
    """Plain YAML/JSON types (mappings, lists and scalars)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _settings(result: Result, baseline: Result | None, workload: Workload) -> dict[str, Any]:
    engine = engine_class(result.engine)
    candidate = engine.candidate_type.from_params(result.params)
    out: dict[str, Any] = {
        "trial": result.number,
        "candidate": result.label,
        "params": plain(result.params),
        "batch_size": candidate.batch_size,
        **engine.settings_entry(candidate, workload),
        "values": {m: float(result.values[m]) for m in METRICS},
        # Beside the speed, what it costs in fidelity (kvopt.quality; None: run without the guard).
        "quality": plain(quality_summary(result.user_attrs)),
    }
    if baseline is not None:  # from the study's own measurements (unconfirmed)
        out["study_gains_pct"] = {m: round(g, 2) for m, g in gains_pct(result, baseline).items()}
    return out


def alternatives(front: list[Result], baseline: Result | None, workload: Workload) -> dict[str, dict[str, Any]]:
    """The front's extremes, each a measured point a user can switch to without re-tuning."""
    if not front:
        return {}
    return {
        name: _settings(_extreme(front, metric, pick), baseline, workload) for name, (metric, pick) in _EXTREMES.items()
    }


def _extreme(front: list[Result], metric: str, pick: Callable[..., Result]) -> Result:
    """The front member with the lowest (``pick=min``) or highest (``max``) ``metric``."""
    return pick(front, key=lambda r: r.values[metric])


@dataclass(frozen=True)
class StudySettings:
    """What the settings files are made from: a finished run, or a study read from storage."""

    study: str
    model: ModelConfig
    profile: str
    slo: Mapping[str, float | None]
    device: str
    workload: Workload
    recommendation: Recommendation | None
    front: list[Result]
    baseline: Result | None
    # What the study loaded: "pretrained" (from model.hub_id) or "random" (its architecture).
    weights: str = "pretrained"
    # The confirmation's per-shape figures (kvopt.confirm), for a profile of several shapes.
    shapes: list[dict[str, Any]] = field(default_factory=list)
    # The engine that ran the study (kvopt.engines).
    engine: str = DEFAULT_ENGINE

    @classmethod
    def from_stored(cls, stored: StoredStudy) -> StudySettings:
        """The same inputs rebuilt from a stored study's attrs (``kvopt report`` needs no config)."""
        config, workload = stored.attrs["config"], stored.attrs["workload"]
        # Fields a study stored before they existed (model.gguf) keep their defaults.
        model = {k: config["model"][k] for k in ModelConfig.__dataclass_fields__ if k in config["model"]}
        return cls(
            study=stored.name,
            model=ModelConfig(**model),
            profile=stored.profile,
            slo=dict(config["profile"].get("slo") or {}),
            device=str(stored.attrs["machine"].get("device", "?")),
            workload=Workload(
                int(workload["prompt_tokens"]),
                int(workload["new_tokens"]),
                shared_prefix_tokens=int(workload.get("shared_prefix_tokens") or 0),
            ),
            recommendation=stored.recommendation,
            front=stored.front,
            baseline=stored.baseline,
            weights=str(stored.attrs.get("weights", "pretrained")),
            shapes=list((stored.confirmation or {}).get("shapes") or []),
            engine=stored.engine,
        )


def settings_document(src: StudySettings) -> dict[str, Any]:
    """Everything ``recommended.yaml`` holds, in plain types (needs a recommendation)."""
    rec, baseline, model, workload = src.recommendation, src.baseline, src.model, src.workload
    if rec is None:
        raise ValueError("no recommendation: there are no settings to write")
    recommended = _settings(rec.result, baseline, workload)
    recommended.update(
        {
            # Confirmed gains when the study confirmed them (then gains_ci holds the CIs).
            "gains_pct": None if rec.gains_pct is None else {m: round(g, 2) for m, g in rec.gains_pct.items()},
            "gains_ci": plain(rec.gains_ci),
            "confirmed_rounds": rec.confirmed_rounds,
            "meets_slo": rec.meets_slo,
            "note": rec.note,
        }
    )
    return {
        "study": src.study,
        "engine": src.engine,
        "model": {"name": model.name, "hub_id": model.hub_id, "revision": model.revision, "weights": src.weights},
        "profile": src.profile,
        "slo": dict(src.slo),
        "device": src.device,
        "workload": {
            "prompt_tokens": workload.prompt_tokens,
            "new_tokens": workload.new_tokens,
            "shared_prefix_tokens": workload.shared_prefix_tokens,
        },
        "recommended": recommended,
        "baseline": None
        if baseline is None
        else {"trial": baseline.number, "candidate": baseline.label, "values": dict(baseline.values)},
        "alternatives": alternatives(src.front, baseline, workload),
        "shapes": _shapes(src.shapes, rec),
    }


def _shapes(shapes: list[dict[str, Any]], rec: Recommendation) -> list[dict[str, Any]]:
    """Per request shape: its share, the recommendation's confirmed gains there, and what that shape alone prefers."""
    number = str(rec.result.number)
    return [
        {
            "prompt_tokens": s["prompt_tokens"],
            "new_tokens": s["new_tokens"],
            "share": round(s["share"], 4),
            "trials_measured_this_shape": bool(s.get("trial_shape")),
            "gains_pct": {m: round(g["pct"], 2) for m, g in s["gains"][number].items()},
            "score": round(s["score"][number], 4),
            "prefers_trial": s["preferred"],
        }
        for s in shapes
    ]


def settings_script(src: StudySettings, result: Result | None = None) -> str:
    """The text of ``recommended.py`` for ``result`` (default: the recommendation), by the study's engine."""
    if result is None:
        if src.recommendation is None:
            raise ValueError("no recommendation: there are no settings to write")
        result = src.recommendation.result
    engine = engine_class(src.engine)
    context = ScriptContext(
        candidate=engine.candidate_type.from_params(result.params),
        label=result.label,
        values=dict(result.values),
        model=src.model,
        workload=src.workload,
        weights=src.weights,
        device=src.device,
        profile=src.profile,
        study=src.study,
    )
    return str(engine.settings_script(context))


def write_settings(output_dir: Path, src: StudySettings) -> list[Path]:
    """Write recommended.yaml and recommended.py; nothing when there is no recommendation."""
    if src.recommendation is None:
        return []
    header = (
        f"# kvopt: recommended settings for {src.model.hub_id} on {src.device}, profile {src.profile}.\n"
        + engine_class(src.engine).YAML_HINT
        + "# alternatives: the Pareto front's extremes, measured in the same study.\n"
    )
    yaml_path, py_path = output_dir / "recommended.yaml", output_dir / "recommended.py"
    write_text_atomic(yaml_path, header + yaml.safe_dump(settings_document(src), sort_keys=False, allow_unicode=True))
    write_text_atomic(py_path, settings_script(src))
    return [yaml_path, py_path]
