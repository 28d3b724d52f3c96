"""Profiles as workload mixes: shapes fit to the model, traffic files, the profiles command,
and finalists confirmed on every shape."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import REPO, transformers_engine
from kvopt.commands.profiles import profiles_command
from kvopt.config import validate
from kvopt.confirm import MIN_ROUNDS, paired_scores
from kvopt.engines.transformers.candidate import Candidate, space_from_config
from kvopt.errors import ConfigError
from kvopt.measure.adaptive import median_ci
from kvopt.paths import conf_dir
from kvopt.runner import _mix_lines, tune
from kvopt.traffic import BINS, shapes_from_requests
from kvopt.workload import make_mix, make_workload
from kvopt_bench.common import compose_config
from kvopt_bench.replay import recorded_profile

_REUSE = "dynamic+prefix candidates fill its cache once and copy it into each call (docs/profiles.md)"


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
        return validate(compose(config_name="config", overrides=list(overrides)))


def test_shipped_mixes_clamp_to_the_model_and_merge_identical_shapes():
    gpt2 = _cfg("model=gpt2", "profile=rag")
    assert [(s.prompt_tokens, s.new_tokens) for s in gpt2.profile.shapes][:2] == [(8192, 256), (8192, 512)]
    assert gpt2.profile.weights == {"ttft_ms": 0.35, "decode_tok_s": 0.35, "peak_mem_mb": 0.30}
    mix = make_mix(gpt2.profile, gpt2.model)
    # Six shapes, two after clamping to gpt2's 1024 positions; each keeps half the requests.
    assert [(w.label, w.share) for w in mix.shapes] == [("768+256", 0.5), ("512+512", 0.5)]
    assert mix.trial.label == "768+256"  # equal shares and KV: the fewer new tokens (cheaper to time)
    assert any("6 shapes became 2" in n for n in mix.notes)
    # A long-context model keeps all six; trials measure the largest KV cache.
    qwen = _cfg("model=qwen2.5-0.5b", "profile=rag")
    long_mix = make_mix(qwen.profile, qwen.model)
    assert len(long_mix.shapes) == 6 and long_mix.trial.label == "32512+256"
    # Outputs longer than the positions are capped at half of them.
    longform = _cfg("model=gpt2", "profile=longform")
    assert [w.label for w in make_mix(longform.profile, longform.model).shapes] == ["512+512"]


def test_a_traffic_csv_becomes_quartile_shapes(tmp_path):
    rows = [(100 + 10 * i, 20 + i % 5) for i in range(40)]
    path = tmp_path / "traffic.csv"
    path.write_text("prompt_tokens,new_tokens,user\n" + "".join(f"{p},{n},u{i}\n" for i, (p, n) in enumerate(rows)))
    cfg = _cfg("model=tiny-gpt2", "profile=traffic", f"profile.traffic_file={path}")
    shapes = cfg.profile.shapes
    assert len(shapes) == BINS and sum(s.share for s in shapes) == pytest.approx(1.0)
    assert [s.prompt_tokens for s in shapes] == [145, 245, 345, 445]  # each quarter's median prompt
    assert cfg.raw["profile"]["shapes"][0]["prompt_tokens"] == 145  # stored with the study
    # Few distinct pairs: each is a shape, with its share of the requests.
    assert shapes_from_requests([(10, 4), (10, 4), (30, 2)]) == [(10, 4, 2 / 3), (30, 2, 1 / 3)]


def test_bad_traffic_lines_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "traffic.jsonl"
    path.write_text(
        '{"prompt_tokens": 12, "new_tokens": 4}\n'
        '{"prompt_tokens": -3, "new_tokens": 4}\n'
        "\n"
        "not json\n"
        '{"prompt_tokens": 12}\n'
    )
    with pytest.raises(ConfigError) as info:
        _cfg("model=tiny-gpt2", "profile=traffic", f"profile.traffic_file={path}")
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"profile.traffic_file: {path}:2 got")
    assert f"{path}:4 is not a JSON object" in problems[1]
    assert f"{path}:5 got" in problems[2] and "new_tokens integers >= 1" in problems[2]
    with pytest.raises(ConfigError, match="no such file"):
        _cfg("model=tiny-gpt2", "profile=traffic", f"profile.traffic_file={tmp_path / 'missing.csv'}")
    with pytest.raises(ConfigError, match=r"profile\.traffic_file: got None"):
        _cfg("model=tiny-gpt2", "profile=traffic")


def test_prompt_text_is_counted_with_the_models_tokenizer(tmp_path):
    folder = tmp_path / "model"
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(folder)
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello world hello", "new_tokens": 5}\n{"prompt": "hello", "new_tokens": 3}\n')
    cfg = _cfg("model=tiny-gpt2", f"model.hub_id={folder}", "profile=traffic", f"profile.traffic_file={path}")
    assert [(s.prompt_tokens, s.new_tokens) for s in cfg.profile.shapes] == [(1, 3), (3, 5)]
    # The shipped tiny model has no tokenizer files: one clear line, not a traceback.
    with pytest.raises(ConfigError, match="tokenizer of 'kvopt/tiny-gpt2' cannot be loaded offline"):
        _cfg("model=tiny-gpt2", "profile=traffic", f"profile.traffic_file={path}")


def test_the_profiles_command_lists_shapes_weights_and_slos(capsys):
    assert profiles_command(["model=gpt2"]) == 0
    out = capsys.readouterr().out
    assert "rag: 6 shapes" in out and "8192+256 17%" in out
    assert "weights ttft 0.35, decode 0.35, memory 0.30; SLOs none; 8 trials" in out
    assert "on gpt2: 768+256 50% (trials), 512+512 50%" in out
    assert "chat-agent: 9 shapes" in out and "shared prefix 2000" in out
    assert "traffic: shapes from profile.traffic_file" in out
    assert profiles_command(["profile=nope"]) == 2
    assert "profile: got 'nope'" in capsys.readouterr().err


def test_a_clamped_mix_keeps_the_prefix_share_of_the_profile(capsys):
    # rag on gpt2 (1024 positions): every context is clamped; 768+256 (the trials') stands for
    # 8192, 16384 and 32768 + 256, where the 500-token prefix is at most 500 of 8192.
    rag = _cfg("model=gpt2", "profile=rag")
    mix = make_mix(rag.profile, rag.model)
    assert mix.trial.label == "768+256" and mix.trial.clamped_from == 8192
    assert mix.shared_prefix_tokens == round(500 / 8192 * 768) == 47  # not 500: 65-98% of every prompt
    assert {w.shared_prefix_tokens for w in mix.shapes} == {47}  # one prefix, one system prompt
    assert abs(47 / 768 - 500 / 8192) < 0.5 / 768  # the share, to the token
    said = "47 tokens in every request (500 of 8192 in the profile, kept at its 6.1% share of the clamped prompt)"
    assert mix.describe_prefix() == said
    assert any(n.startswith("shared prefix scaled from 500 to 47 tokens: its 6.1% share") for n in mix.notes)
    assert mix.as_dict()["shared_prefix_tokens"] == 47 and mix.as_dict()["profile_shared_prefix_tokens"] == 500
    space = space_from_config(rag.search_space, Candidate("dynamic", "sdpa", "float32", 1), {}, 47 / 768)
    assert ("shared prefix", f"{said}; {_REUSE}") in _mix_lines(mix, transformers_engine(), space)
    assert profiles_command(["model=gpt2", "profile=rag"]) == 0
    assert f"  shared prefix on gpt2: {said}\n" in capsys.readouterr().out
    # At least one token when the share rounds to nothing, and always below the shortest prompt.
    tiny = make_mix(_cfg("model=gpt2", "profile=rag", "profile.shared_prefix_tokens=5").profile, rag.model)
    assert tiny.shared_prefix_tokens == 1  # 5 of 8192 is 0.47 of 768
    chat = _cfg("model=gpt2", "profile=chat-agent")
    chat_mix = make_mix(chat.profile, chat.model)
    assert chat_mix.shared_prefix_tokens == 767 < min(w.prompt_tokens for w in chat_mix.shapes) == 768
    assert "938 tokens, cut to one less than the shortest prompt, 768" in chat_mix.describe_prefix()


def test_an_unclamped_mix_keeps_the_profiles_prefix():
    short = _cfg("model=gpt2", "profile=rag", "profile.context_lengths=[600,700]", "profile.output_lengths=[64]")
    mix = make_mix(short.profile, short.model)
    assert [w.clamped_from for w in mix.shapes] == [None, None]
    assert mix.shared_prefix_tokens == 500 and mix.prefix_share_of is None
    assert mix.describe_prefix() == "500 tokens in every request" and mix.notes == ()
    # Too long for the shortest prompt, unclamped: cut below it, as before.
    cut = make_mix(_cfg("model=gpt2", "profile=ci-micro", "profile.shared_prefix_tokens=40").profile, short.model)
    assert cut.shared_prefix_tokens == 31
    assert (
        cut.describe_prefix()
        == "31 tokens in every request (40 in the profile, cut to one less than the shortest prompt, 32)"
    )
    assert (
        make_mix(
            _cfg("model=gpt2", "profile=rag", "profile.shared_prefix_tokens=0").profile, short.model
        ).describe_prefix()
        == ""
    )


def test_a_traffic_file_keeps_its_measured_shares_and_the_prefix_its_share(tmp_path):
    # tiny-gpt2 has 256 positions: the three longer quarters (245, 345, 445 + 22) clamp to one 234+22.
    rows = [(100 + 10 * i, 20 + i % 5) for i in range(40)]
    path = tmp_path / "traffic.csv"
    path.write_text("prompt_tokens,new_tokens\n" + "".join(f"{p},{n}\n" for p, n in rows))
    cfg = _cfg("model=tiny-gpt2", "profile=traffic", f"profile.traffic_file={path}", "profile.shared_prefix_tokens=40")
    assert [(s.prompt_tokens, s.share) for s in cfg.profile.shapes] == [
        (145, 0.25),
        (245, 0.25),
        (345, 0.25),
        (445, 0.25),
    ]
    mix = make_mix(cfg.profile, cfg.model)
    assert [(w.label, w.share) for w in mix.shapes] == [("145+22", 0.25), ("234+22", 0.75)]  # measured shares, summed
    assert mix.trial.label == "234+22" and mix.shared_prefix_tokens == round(40 / 245 * 234) == 38
    # Unclamped (every quarter fits): the profile's prefix as it is.
    fits = _cfg("model=gpt2", "profile=traffic", f"profile.traffic_file={path}", "profile.shared_prefix_tokens=40")
    unclamped = make_mix(fits.profile, fits.model)
    assert [w.share for w in unclamped.shapes] == [0.25] * 4 and unclamped.shared_prefix_tokens == 40


@pytest.mark.slow
def test_finalists_are_confirmed_on_every_shape(tmp_path, monkeypatch):
    # Count the confirmation's generate calls per (candidate, shape): a memory-reading first
    # call on a new shape is its first warm-up call, as in a trial, not one more beside them.
    import kvopt.confirm
    import kvopt.engines.transformers.engine as transformers_engine_module

    calls: dict[tuple[str, int], int] = {}
    real = transformers_engine_module.timed_generate
    confirming = []  # set once the confirmation sets up its first calls (trials use the same engine)
    real_setup = kvopt.confirm._ShapeCalls.__init__

    def setup(self, *args, **kwargs):
        confirming.append(True)
        real_setup(self, *args, **kwargs)

    def counting(model, inputs, cand, new_tokens, device, **kwargs):
        if confirming:
            key = (cand.label, inputs["input_ids"].shape[1])
            calls[key] = calls.get(key, 0) + 1
        return real(model, inputs, cand, new_tokens, device, **kwargs)

    monkeypatch.setattr(kvopt.confirm._ShapeCalls, "__init__", setup)
    monkeypatch.setattr(transformers_engine_module, "timed_generate", counting)
    # A finalist besides the baseline on every machine: the profile counts memory alone, and
    # bfloat16 holds half of float32's bytes (weights and cache), however fast either runs here.
    # (Timed objectives would let a machine measure the baseline best: then nothing is confirmed.)
    cfg = _cfg(
        "profile.warmup=2",
        "model=tiny-llama",
        "profile=ci-micro",
        "profile.context_lengths=[8,40]",
        "profile.output_lengths=[4]",
        "profile.weights.ttft_ms=0",
        "profile.weights.decode_tok_s=0",
        "profile.weights.peak_mem_mb=1",
        "quality.allow_unverified=true",  # random weights: bfloat16 is timed (and marked) only so
        "study.n_trials=2",
        "study.converge=false",
        f"confirm.rounds={MIN_ROUNDS}",  # the fewest rounds that can confirm a decision
        "confirm.max_seconds=600",  # all of them even on a loaded machine
        "measure.adaptive=false",
        "search_space.dtype=[float32,bfloat16]",
        "search_space.cache_implementation=[dynamic]",
        "pruning.dominated=false",
        "search_space.attn_implementation=[sdpa]",
        "search_space.batch_size=[1]",
        f"storage.url=sqlite:///{tmp_path / 'kvopt.db'}",
        f"scale.lock_dir={tmp_path}",  # no turn-taking with kvopt processes outside the test
    )
    result = tune(cfg, output_dir=tmp_path / "out")
    confirmation = result.confirmation
    assert confirmation is not None and len(confirmation.shapes) == 2
    assert sorted(r.label for r in confirmation.finalists) == ["dynamic/sdpa/bfloat16/b1", "dynamic/sdpa/float32/b1"]
    baseline = next(r for r in confirmation.finalists if r.is_baseline)
    mix: dict[int, list[float]] = {}
    for shape in confirmation.shapes:
        assert shape["share"] == 0.5 and shape["trial_shape"] == (shape["prompt_tokens"] == 40)
        samples, memory = shape["samples"], shape["peak_mem_mb"]
        for r in confirmation.finalists:
            assert len(samples[str(r.number)]["ttft_ms"]) == MIN_ROUNDS
            scores = paired_scores(
                samples[str(r.number)],
                samples[str(baseline.number)],
                memory[str(r.number)] / memory[str(baseline.number)],
                cfg.profile.weights,
            )
            mix[r.number] = [m + 0.5 * s for m, s in zip(mix.get(r.number, [0.0] * len(scores)), scores)]
    # The decision follows the share-weighted mix score: a finalist only with a proven gain.
    proven = [n for n, scores in mix.items() if n != baseline.number and median_ci(scores).low > 0]
    assert (confirmation.recommended.number in proven) or (not proven and confirmation.recommended.is_baseline)
    out = tmp_path / "out"
    doc = yaml.safe_load((out / "recommended.yaml").read_text())
    assert [(s["prompt_tokens"], s["new_tokens"]) for s in doc["shapes"]] == [(8, 4), (40, 4)]
    assert "Per request shape" in (out / "report.md").read_text()
    workload = json.loads((out / "results.json").read_text())["workload"]
    assert workload["trial_shape"] == 1 and len(workload["shapes"]) == 2
    # Trial shape: 2 warm-up calls + the rounds. Other shape: the memory call, 1 more warm-up
    # (warmup - 1; the settle call after a sub-second profiled call is the same one), the rounds.
    assert calls == {(r.label, n): 2 + MIN_ROUNDS for r in confirmation.finalists for n in (8, 40)}


def test_replays_keep_the_profile_their_grid_was_recorded_with():

    grid = json.loads((REPO / "benchmarks" / "grid_gpt2-rag.json").read_text())
    cfg = compose_config(grid["model"], grid["profile"], [*grid["overrides"], *recorded_profile(grid)])
    assert cfg.profile.weights == grid["profile_config"]["weights"]  # rag's former 0.6 / 0.2 / 0.2
    workload = make_workload(cfg.profile, cfg.model)
    assert (workload.prompt_tokens, workload.new_tokens) == (992, 32)
    assert workload.shared_prefix_tokens == 0  # recorded before prefix reuse: no shared prompt ids
