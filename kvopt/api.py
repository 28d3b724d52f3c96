"""The Python API: :func:`tune` a study from a dict, overrides or keywords; :func:`load` one.

``kvopt.tune(model="tiny-gpt2", profile="ci-micro", study={"n_trials": 3})`` composes the
shipped Hydra configs exactly as ``python -m kvopt model=tiny-gpt2 profile=ci-micro
study.n_trials=3`` does, validates them the same way and runs the same study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from rich.console import Console

from kvopt.config import KvoptConfig, validate
from kvopt.errors import ConfigError

if TYPE_CHECKING:  # importing them at run time would load torch with ``import kvopt``
    from kvopt.runner import StudyResult
    from kvopt.stored import StoredStudy

__all__ = ["compose_config", "tune", "load"]

Overrides = Mapping[str, Any] | DictConfig | Sequence[str] | KvoptConfig | None


def _groups(conf: str) -> set[str]:
    return {p.name for p in Path(conf).iterdir() if p.is_dir() and not p.name.startswith("_")}


def _split(values: Mapping[str, Any], groups: set[str], conf: str) -> tuple[list[str], dict[str, Any]]:
    """Group choices become Hydra overrides (``model=tiny-gpt2``); the rest is merged on top.

    A group given as a mapping with a ``name`` that is a shipped option (a composed config
    passed back in) selects that option first, so its fields replace, not mix with, the default's.
    """
    choices: list[str] = []
    merged: dict[str, Any] = {}
    for key, value in values.items():
        if key in groups and isinstance(value, str):
            choices.append(f"{key}={value}")
            continue
        if key in groups and isinstance(value, Mapping) and (Path(conf) / key / f"{value.get('name')}.yaml").is_file():
            choices.append(f"{key}={value['name']}")
        merged[key] = value
    return choices, merged


def compose_config(config: Overrides = None, /, **overrides: Any) -> KvoptConfig:
    """The validated config the CLI would build; :class:`ConfigError` naming each bad field.

    ``config`` is a mapping or DictConfig of values, a list of Hydra-style overrides
    (``["model=tiny-gpt2", "study.n_trials=3"]``), or an already validated KvoptConfig;
    keyword arguments are values too and win over ``config``.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from kvopt.cli import conf_dir, unknown_group_options

    if isinstance(config, KvoptConfig):
        if overrides:
            raise ConfigError([f"tune: got a KvoptConfig and keyword overrides {sorted(overrides)}; "
                               "allowed: one of them (pass a dict or overrides to combine)"])
        return config
    conf = conf_dir()
    groups = _groups(conf)
    cli_overrides: list[str] = []
    values: dict[str, Any] = {}
    if isinstance(config, (Mapping, DictConfig)):
        values.update(OmegaConf.to_container(config) if isinstance(config, DictConfig) else config)  # type: ignore[arg-type]
    elif isinstance(config, Sequence) and not isinstance(config, str):
        cli_overrides = [str(o) for o in config]
    elif config is not None:
        raise ConfigError([f"config: got {type(config).__name__} {config!r}; allowed: a dict, a DictConfig, "
                           "a list of overrides like ['model=tiny-gpt2'], a KvoptConfig, or None"])
    values.update(overrides)
    choices, merged = _split(values, groups, conf)
    problems = unknown_group_options(cli_overrides + choices, conf)
    if problems:
        raise ConfigError(problems)
    with initialize_config_dir(config_dir=conf, version_base="1.3", job_name="kvopt"):
        try:
            composed = compose(config_name="config", overrides=cli_overrides + choices)
        except HydraException as exc:
            raise ConfigError([f"overrides: {str(exc).splitlines()[0]}"]) from None
    try:
        composed = OmegaConf.merge(composed, merged)
    except ConfigKeyError as exc:  # a key the config does not have
        raise ConfigError([_unknown_key(composed, exc.full_key)]) from None
    except OmegaConfBaseException as exc:  # e.g. a mapping given where a value belongs
        raise ConfigError([f"{exc.full_key or 'config'}: {str(exc).splitlines()[0]}"]) from None
    return validate(composed)


def _unknown_key(composed: DictConfig, full_key: str) -> str:
    parent = full_key.rpartition(".")[0]
    node = OmegaConf.select(composed, parent) if parent else composed
    allowed = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "none"
    return f"{full_key}: no such setting; allowed keys of {parent or 'the config'}: {allowed}"


def tune(
    config: Overrides = None,
    /,
    *,
    output_dir: str | Path | None = None,
    console: Console | None = None,
    **overrides: Any,
) -> StudyResult:
    """Run a study as ``python -m kvopt`` does and return its result.

    The result has ``.front`` (Pareto front), ``.recommendation`` (with ``model_kwargs()`` and
    ``generate_kwargs()``), ``.baseline``, ``.results`` and ``.study_name``. With
    ``output_dir``, results.json, recommended.yaml and recommended.py are written there.
    Raises :class:`~kvopt.errors.KvoptError` on bad input, before any study is touched.
    """
    import optuna

    from kvopt import runner

    cfg = compose_config(config, **overrides)
    prepared = runner.prepare(cfg)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kvopt prints each trial itself, as the CLI does
    try:
        return runner.tune(
            cfg,
            output_dir=Path(output_dir) if output_dir is not None else None,
            console=console,
            prepared=prepared,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
        if prepared.device_lock is not None:  # a long-lived caller must not keep the lock file open
            prepared.device_lock.close()


def load(study_name: str, storage: str) -> StoredStudy:
    """A stored study: its results, front, (confirmed) recommendation and the Optuna study.

    ``storage`` is the URL the study ran with (``sqlite:///kvopt.db``, ``postgresql://…``)
    or a journal file's path.
    """
    from kvopt.stored import load_study

    return load_study(study_name, storage)
