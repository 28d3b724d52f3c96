"""``python -m kvopt profiles``: every profile with its shapes, weights, SLOs and budget.

With ``model=NAME`` (or ``model.hub_id=…``) each profile is also shown fit to that model's
own positions (clamped shapes, the one trials measure); with ``profile=NAME`` only that profile (``profile=traffic
profile.traffic_file=FILE`` shows the shapes kvopt derives from a traffic file).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from kvopt.compose import compose_config, unknown_group_options
from kvopt.config import ProfileConfig
from kvopt.engines import engine_class
from kvopt.errors import ConfigError, KvoptError, print_error
from kvopt.paths import conf_dir
from kvopt.workload import make_mix

__all__ = ["profiles_command", "describe_shapes"]


def describe_shapes(profile: ProfileConfig) -> str:
    """``prompt+new share`` per shape, as the profile states them (before fitting to a model)."""
    return ", ".join(f"{s.label} {s.share:.0%}" for s in profile.shapes)


def _names(args: list[str]) -> list[str]:
    chosen = [a.partition("=")[2] for a in args if a.startswith("profile=")]
    return chosen or sorted(p.stem for p in (Path(conf_dir()) / "profile").glob("*.yaml"))


def profiles_command(args: list[str]) -> int:
    """Print every profile (or the ``profile=`` one); 2 after one clear message on bad input.

    Args:
        args: Hydra-style overrides: ``model=NAME`` fits the shapes to that model.

    Returns:
        The exit status.
    """
    problems = unknown_group_options(args, conf_dir())
    if problems:
        print_error(str(ConfigError(problems)))
        return 2
    fit = any(a.startswith(("model=", "model.hub_id=")) for a in args)
    rest = [a for a in args if not a.startswith("profile=")]
    lines: list[str] = []
    for name in _names(args):
        try:
            cfg = compose_config([f"profile={name}", *rest])
            if fit:  # the model's own positions (its config.json), as a run fits the mix
                cfg = engine_class(cfg.engine.name).resolve(cfg)[0]
        except ConfigError as exc:
            if name == "traffic" and any("profile.traffic_file: got None" in p for p in exc.problems):
                lines += [f"{name}: shapes from profile.traffic_file=FILE (quartiles of prompt length)", ""]
                continue
            print_error(str(exc))
            return 2
        except KvoptError as exc:
            print_error(str(exc))
            return 2
        p, w = cfg.profile, cfg.profile.weights
        slo = ", ".join(f"{k} {v:g}" for k, v in p.slo.items() if v is not None) or "none"
        lines += [
            f"{name}: {len(p.shapes)} shapes (prompt+new tokens share): {describe_shapes(p)}",
            f"  shared prefix {p.shared_prefix_tokens or 'none'}; weights ttft {w['ttft_ms']:.2f}, "
            f"decode {w['decode_tok_s']:.2f}, memory {w['peak_mem_mb']:.2f}; SLOs {slo}; {p.n_trials} trials",
        ]
        if fit:
            mix = make_mix(p, cfg.model)
            lines.append(f"  on {cfg.model.name}: {mix.describe()}")
            if mix.shared_prefix_tokens:  # what the run will use: fit to the model's positions
                lines.append(f"  shared prefix on {cfg.model.name}: {mix.describe_prefix()}")
            lines += [f"  note: {n}" for n in mix.notes]
        lines.append("")
    lines.append(
        "Trials measure the shape marked (trials): the largest share, then the largest KV cache, then fewer new "
        "tokens; the finalists are confirmed on every shape and scored by the shares (docs/profiles.md)."
    )
    console = Console(soft_wrap=True)
    for line in lines:
        console.print(line, highlight=False, markup=False)
    return 0
