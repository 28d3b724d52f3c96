"""From what a user types to a validated config: Hydra composition and ``key=value`` arguments.

``python -m kvopt``, ``kvopt.tune``, ``kvopt info`` and the benchmark scripts all build their
config here, so they accept and refuse the same input with the same words. Foundation: it
imports only the config schema, errors and paths. :func:`model_name` names a user's own model
(``model.hub_id=...``) for the study and for Hydra's output folders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from kvopt.config import KvoptConfig, validate
from kvopt.errors import ConfigError
from kvopt.paths import conf_dir

__all__ = ["Overrides", "compose_config", "unknown_group_options", "parse_key_values", "model_name", "shipped_models"]

# What compose_config takes: values, Hydra-style overrides, a validated config, or nothing.
Overrides = Mapping[str, Any] | DictConfig | Sequence[str] | KvoptConfig | None


def shipped_models() -> dict[str, dict[str, Any]]:
    """The ``model`` group's options (conf/model/*.yaml) by name, as their YAML says."""
    return {
        p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(Path(conf_dir(), "model").glob("*.yaml"))
    }


def model_name(name: str, hub_id: str, gguf: str | None = None) -> str:
    """The name a model's studies and output folders go by.

    A GGUF file (``model.gguf``, engine=llamacpp) is named after the file (``./q4.gguf`` -> ``q4``).

    A ``model`` option keeps its name for its own hub id. Given another ``model.hub_id``, the
    model is named after it: a shipped option with that hub id by that option's name, else
    the hub id's last part (``Qwen/Qwen2.5-7B-Instruct`` -> ``Qwen2.5-7B-Instruct``) or the
    folder's name (``./ckpt`` -> ``ckpt``). A name the user set (no shipped option) stays.
    """
    if gguf:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(gguf).stem).strip("-") or "model"
    options = shipped_models()
    if name not in options or options[name].get("hub_id") == hub_id:
        return name
    same = sorted(option for option, data in options.items() if data.get("hub_id") == hub_id)
    if same:
        return same[0]
    folder = Path(hub_id).expanduser()
    own = folder.resolve().name if folder.is_dir() else hub_id.rstrip("/\\").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", own).strip("-") or "model"


# Hydra's output folders (conf/config.yaml hydra.run.dir) name the model the user gave too.
OmegaConf.register_new_resolver("kvopt_model_name", model_name, replace=True)


def _groups(conf: str) -> set[str]:
    return {p.name for p in Path(conf).iterdir() if p.is_dir() and not p.name.startswith("_")}


def unknown_group_options(args: list[str], conf: str) -> list[str]:
    """Problems with ``group=option`` arguments, found before Hydra composes anything.

    Hydra would also refuse them, but with its search path and a hint about stack traces;
    this names the group, the value given and the allowed options in kvopt's own words.

    Args:
        args: command-line style arguments; only ``group=option`` ones are checked.
        conf: the config folder (see :func:`kvopt.paths.conf_dir`).

    Returns:
        One line per unknown option, empty when every option exists.
    """
    problems = []
    root = Path(conf)
    groups = _groups(conf)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") not in groups:
            continue
        group = key.lstrip("+~")
        allowed = sorted(p.stem for p in (root / group).glob("*.yaml"))
        for option in value.split(","):  # multirun sweeps list options with commas
            if option and option not in allowed:
                problems.append(f"{group}: got {option!r}; allowed: {', '.join(allowed)}")
    return problems


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

    Args:
        config: a mapping or DictConfig of values, a list of Hydra-style overrides
            (``["model=tiny-gpt2", "study.n_trials=3"]``), an already validated
            KvoptConfig (returned as is), or None (the shipped defaults).
        **overrides: values too; they win over ``config``.

    Raises:
        ConfigError: every problem found, each naming the field, the value and what is allowed.
    """
    from hydra import compose, initialize_config_dir  # Hydra is slow to import: only when composing
    from hydra.errors import HydraException

    if isinstance(config, KvoptConfig):
        if overrides:
            raise ConfigError(
                [
                    f"tune: got a KvoptConfig and keyword overrides {sorted(overrides)}; "
                    "allowed: one of them (pass a dict or overrides to combine)"
                ]
            )
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
        raise ConfigError(
            [
                f"config: got {type(config).__name__} {config!r}; allowed: a dict, a DictConfig, "
                "a list of overrides like ['model=tiny-gpt2'], a KvoptConfig, or None"
            ]
        )
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
        final = OmegaConf.merge(composed, merged)
    except ConfigKeyError as exc:  # a key the config does not have
        raise ConfigError([_unknown_key(composed, exc.full_key or "")]) from None
    except OmegaConfBaseException as exc:  # e.g. a mapping given where a value belongs
        raise ConfigError([f"{exc.full_key or 'config'}: {str(exc).splitlines()[0]}"]) from None
    assert isinstance(final, DictConfig)  # a mapping merged into the composed mapping
    return validate(final)


def _unknown_key(composed: DictConfig, full_key: str) -> str:
    parent = full_key.rpartition(".")[0]
    node = OmegaConf.select(composed, parent) if parent else composed
    allowed = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else "none"
    return f"{full_key}: no such setting; allowed keys of {parent or 'the config'}: {allowed}"


def parse_key_values(args: list[str], allowed: Mapping[str, str]) -> dict[str, str]:
    """``key=value`` arguments of a subcommand (``kvopt report``, ``kvopt dashboard``).

    Args:
        args: the arguments after the subcommand's name.
        allowed: each key the subcommand takes -> what it takes, for the message.

    Raises:
        ConfigError: naming each unknown or malformed argument and the keys allowed.
    """
    values: dict[str, str] = {}
    problems = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            keys = ", ".join(f"{k}=<{what}>" for k, what in allowed.items())
            problems.append(f"argument {arg!r}: allowed: {keys}")
        else:
            values[key] = value
    if problems:
        raise ConfigError(problems)
    return values
