"""Every shipped config composes and validates; every bad value is named with what is allowed."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF
from kvopt.compose import unknown_group_options
from kvopt.config import validate
from kvopt.errors import ConfigError
from kvopt.paths import conf_dir


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return compose(config_name="config", overrides=overrides)


def test_conf_dir_is_the_repository_conf():
    assert (CONF / "config.yaml").samefile(f"{conf_dir()}/config.yaml")


# profile=traffic needs the user's file: tests/test_profiles.py validates it with one.
@pytest.mark.parametrize(
    "model,profile", list(itertools.product(_options("model"), [p for p in _options("profile") if p != "traffic"]))
)
def test_every_model_and_profile_validates(model, profile):
    cfg = validate(_compose([f"model={model}", f"profile={profile}"]))
    assert cfg.model.name == model
    assert cfg.profile.name == profile
    assert abs(sum(cfg.profile.weights.values()) - 1.0) < 1e-9
    assert cfg.study.n_trials == cfg.profile.n_trials  # the profile's budget is the default


@pytest.mark.parametrize("group", ["search_space", "sampler", "storage"])
def test_every_option_of_the_other_groups_validates(group):
    for option in _options(group):
        cfg = validate(_compose([f"{group}={option}"]))
        assert cfg is not None


def test_model_configs_carry_their_architecture():
    for name in _options("model"):
        cfg = validate(_compose([f"model={name}"]))
        assert cfg.model.architecture["model_type"] in {"gpt2", "llama", "qwen2"}
        assert cfg.model.weights in {"auto", "pretrained", "random"}
        assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize(
    "override,field,allowed",
    [
        ("search_space.cache_implementation=[foo]", "search_space.cache_implementation", "dynamic"),
        ("search_space.attn_implementation=[sdpa,bogus]", "search_space.attn_implementation", "eager"),
        ("search_space.dtype=[int8]", "search_space.dtype", "bfloat16"),
        ("search_space.batch_size=[-1]", "search_space.batch_size", "integers >= 1"),
        ("profile.weights.ttft_ms=0.9", "profile.weights", "sum to 1"),
        ("study.n_trials=0", "study.n_trials", "integer >= 1"),
        ("study.timeout=-5", "study.timeout", "seconds > 0"),
        ("device=gpu", "device", "cuda:N"),
        ("model.weights=maybe", "model.weights", "pretrained"),
        ("profile.output_lengths=[1]", "profile.output_lengths", ">= 2"),
        ("profile.slo.max_ttft_ms=-1", "profile.slo.max_ttft_ms", "> 0"),
        ("storage.url=not-a-url", "storage.url", "sqlite:///"),
        ("study.converge=maybe", "study.converge", "true or false"),
        ("study.warm_start=@sqlite:///x.db", "study.warm_start", "STUDY@STORAGE_URL"),
        ("sampler.front_every=-1", "sampler.front_every", "integer >= 0"),
        ("study.budget=soon", "study.budget", "5m"),
        ("study.budget=0", "study.budget", "1h"),
        ("measure.decode_window=-2", "measure.decode_window", "integer >= 0"),
        ("confirm.equivalence=2", "confirm.equivalence", "profile-score difference"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(override, field, allowed):
    with pytest.raises(ConfigError) as info:
        validate(_compose([override]))
    message = str(info.value)
    assert f"{field}: got" in message
    assert allowed in message


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        validate(_compose(["study.n_trials=0", "seed=-1", "profile.warmup=0"]))
    assert len(info.value.problems) == 3


def test_unknown_group_options_are_found_before_hydra():
    problems = unknown_group_options(["model=foo,gpt2", "sampler=tpe", "study.n_trials=3"], conf_dir())
    assert problems == ["model: got 'foo'; allowed: gpt2, qwen2.5-0.5b, tiny-gpt2, tiny-llama"]


@pytest.mark.parametrize(("given", "seconds"), [(300, 300.0), ("300s", 300.0), ("5m", 300.0), ("1.5h", 5400.0)])
def test_a_budget_is_a_duration(given, seconds):
    from kvopt.config import parse_duration

    assert parse_duration(given) == seconds
    assert validate(_compose([f"study.budget={given}"])).study.budget == seconds
    assert validate(_compose(["study.budget=null"])).study.budget is None


def test_the_yaml_states_the_dataclass_defaults():
    """One source of defaults: the dataclasses; conf/config.yaml repeats them for Hydra and --help."""
    from kvopt.config import ConfirmConfig, MeasureConfig, PruningConfig, QualityConfig, ScaleConfig, TrialConfig

    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        cfg = validate(compose(config_name="config"))
    assert (cfg.measure, cfg.trial, cfg.pruning, cfg.confirm, cfg.scale, cfg.worker, cfg.quality) == (
        MeasureConfig(),
        TrialConfig(),
        PruningConfig(),
        ConfirmConfig(),
        ScaleConfig(),
        0,
        QualityConfig(),
    )
    # A config without these sections (a dict passed to validate) gets the same.
    sections = ("model", "profile", "search_space", "sampler", "storage", "study", "device", "seed")
    bare = validate({k: v for k, v in cfg.raw.items() if k in sections})
    assert (bare.measure, bare.trial, bare.pruning, bare.confirm, bare.scale, bare.quality) == (
        cfg.measure,
        cfg.trial,
        cfg.pruning,
        cfg.confirm,
        cfg.scale,
        cfg.quality,
    )
