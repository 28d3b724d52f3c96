"""The Transformers engine's settings to paste: ``recommended.py``, the YAML entry, the terminal snippet.

All come from :meth:`Candidate.model_kwargs` / :meth:`Candidate.generate_kwargs`, so what a
user pastes is what kvopt measured. ``recommended.py`` needs only torch and transformers: it
must run where kvopt is not installed.
"""

from __future__ import annotations

import dataclasses
import pprint
from collections.abc import Mapping
from typing import Any

from transformers import CompileConfig, ContinuousBatchingConfig

from kvopt.engines.base import ScriptContext
from kvopt.engines.transformers.candidate import Candidate
from kvopt.engines.transformers.prefix import generate_cache_keyword
from kvopt.workload import Workload

__all__ = ["plain", "call_args", "settings_entry", "settings_script", "paste_snippet"]


def _changed_fields(config: ContinuousBatchingConfig) -> dict[str, Any]:
    """The fields kvopt set on a continuous-batching config (the rest stay Transformers' defaults)."""
    default = ContinuousBatchingConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def plain(value: Any) -> Any:
    """Plain YAML/JSON types: a CompileConfig or ContinuousBatchingConfig becomes the mapping
    its constructor takes."""
    if isinstance(value, CompileConfig):
        return plain(value.to_dict())
    if isinstance(value, ContinuousBatchingConfig):
        return plain(_changed_fields(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def call_args(kwargs: Mapping[str, Any]) -> str:
    """``k=v, ...`` as a user types it (a CompileConfig by its non-default fields)."""
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, CompileConfig):
            default = CompileConfig().to_dict()
            changed = {k: v for k, v in value.to_dict().items() if v != default[k]} or {"fullgraph": False}
            value_text = "CompileConfig(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"
        elif isinstance(value, ContinuousBatchingConfig):
            fields = _changed_fields(value)
            value_text = "ContinuousBatchingConfig(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"
        else:
            value_text = repr(value)
        parts.append(f"{key}={value_text}")
    return ", ".join(parts)


def settings_entry(candidate: Candidate, workload: Workload) -> dict[str, Any]:
    """recommended.yaml's settings of one candidate: ``from_pretrained`` and ``generate`` keyword arguments."""
    return {
        "model_kwargs": plain(candidate.model_kwargs()),
        "generate_kwargs": plain(candidate.generate_kwargs(workload.prompt_tokens, workload.new_tokens)),
    }


_SCRIPT = '''"""kvopt's recommended settings for {hub_id} on {device} (profile {profile}, study {study}).

Measured by kvopt: {label}: TTFT {ttft:.1f} ms, decode {tput:.1f} tok/s, peak memory {mem:.1f} MB,
with {weights} weights. Needs only torch and transformers. Run it as is:

    python recommended.py                      # what the study measured ({weights} weights)
    python recommended.py --pretrained         # the model's own weights (download if not cached)
    python recommended.py --model HUB_ID_OR_FOLDER
    python recommended.py --random-weights     # its architecture with random weights, offline

Each generate call gets a cache of its own (a new one from cache_implementation, or, where
SHARED_PREFIX_TOKENS is set, a copy of the shared prefix's cache filled once), so no call sees
another's stale keys and values.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import time

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CompileConfig,
    ContinuousBatchingConfig,
    DynamicCache,
)

MODEL_ID = {hub_id!r}  # a hub id, or the folder the study loaded
REVISION = {revision!r}  # the commit the study loaded, when one was known
# What the study measured: "pretrained" weights of MODEL_ID, or "random" weights of ARCHITECTURE.
WEIGHTS = {weights!r}
TRUST_REMOTE_CODE = {trust_remote_code!r}
DEVICE = {device!r}
MODEL_KWARGS = {model_kwargs}
GENERATE_KWARGS = {generate_kwargs}
BATCH_SIZE = {batch_size!r}
PROMPT_TOKENS = {prompt_tokens!r}
NEW_TOKENS = {new_tokens!r}
# Leading prompt tokens every request shares (a system prompt): filled into a cache once, and
# each call starts from a copy of it (0: every call prefills its whole prompt).
SHARED_PREFIX_TOKENS = {shared_prefix_tokens!r}
# The model's config.json fields: --random-weights builds it without a download.
ARCHITECTURE = {architecture}


def fail(what: str, exc: Exception) -> None:
    """One clear line and exit status 2, never a traceback."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    print(f"recommended.py: error: cannot load {{what}} ({{reason}}); --random-weights times the "
          "measured architecture with random weights, offline", file=sys.stderr)
    sys.exit(2)


def load_model(model: str, random_weights: bool, device: str) -> torch.nn.Module:
    if random_weights:
        fields = dict(ARCHITECTURE)
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        model_obj = AutoModelForCausalLM.from_config(config, **MODEL_KWARGS)
    else:
        revision = REVISION if model == MODEL_ID else None
        try:
            model_obj = AutoModelForCausalLM.from_pretrained(
                model, revision=revision, trust_remote_code=TRUST_REMOTE_CODE, **MODEL_KWARGS
            )
        except (OSError, ValueError) as exc:  # not cached and offline, no such folder or model
            fail(repr(model), exc)
    return model_obj.to(device).eval()


def make_inputs(model: torch.nn.Module, source: str, prompt: str | None, device: str) -> dict:
    if prompt is None:
        # The workload kvopt measured: BATCH_SIZE rows of PROMPT_TOKENS token ids, no padding.
        vocab = model.get_input_embeddings().num_embeddings
        ids = torch.randint(1, vocab, (BATCH_SIZE, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
        ids[:, :SHARED_PREFIX_TOKENS] = ids[0, :SHARED_PREFIX_TOKENS].clone()  # the prefix every request shares
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=TRUST_REMOTE_CODE)
        except (OSError, ValueError) as exc:
            fail(f"the tokenizer of {{source!r}} for --prompt", exc)
        ids = tokenizer([prompt] * BATCH_SIZE, return_tensors="pt").input_ids
    return {{"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}}


def generate_kwargs(exact_length: bool) -> dict:
    kwargs = dict(GENERATE_KWARGS, max_new_tokens=NEW_TOKENS)
    if "compile_config" in kwargs:
        config = CompileConfig(**kwargs["compile_config"])
        # As kvopt measured it: Transformers compiles static caches on CUDA only unless told.
        config._compile_all_devices = True
        kwargs["compile_config"] = config
    if "continuous_batching_config" in kwargs:
        # paged: the page pool kvopt measured, sized for BATCH_SIZE x (PROMPT_TOKENS + NEW_TOKENS).
        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(**kwargs["continuous_batching_config"])
    if exact_length:
        kwargs["min_new_tokens"] = NEW_TOKENS  # EOS cannot end a call early: kvopt's fixed work
    return kwargs


def cache_argument(model: torch.nn.Module) -> str:
    # Decided where this script runs, which may have another Transformers than kvopt's: 5.25 renamed
    # past_key_values to cache (the old name warns); older versions know only the first.
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def fill_prefix(model: torch.nn.Module, input_ids: torch.Tensor) -> DynamicCache | None:
    """The shared prefix's cache, filled once (None when the settings do not reuse a prefix)."""
    tokens = min(SHARED_PREFIX_TOKENS, input_ids.shape[1] - 1)  # generate must prefill a token
    if tokens <= 0:
        return None
    prefix = DynamicCache(config=model.config)
    model(input_ids=input_ids[:1, :tokens], use_cache=True, **{{cache_argument(model): prefix}})
    return prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("KVOPT_MODEL", MODEL_ID),
                        help="hub id or local folder (default: $KVOPT_MODEL, else %(default)s)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="build the architecture with random weights (no download; timing only)")
    weights.add_argument("--pretrained", action="store_true",
                         help="load the model's weights even when the study measured random ones")
    parser.add_argument("--device", default=DEVICE, help="default: %(default)s, where kvopt measured")
    parser.add_argument("--prompt", help="text to complete (default: random ids of the measured length)")
    parser.add_argument("--calls", type=int, default=2, help="generate calls, each with a new cache")
    parser.add_argument("--exact-length", action="store_true",
                        help="always generate NEW_TOKENS tokens, as kvopt measured")
    args = parser.parse_args()

    # As the study ran: random weights of its architecture when it measured those.
    random_weights = args.random_weights or (WEIGHTS == "random" and args.model == MODEL_ID and not args.pretrained)
    model = load_model(args.model, random_weights, args.device)
    print(f"loaded {{args.model}}: dtype {{model.dtype}}, attention {{model.config._attn_implementation}}")
    inputs = make_inputs(model, args.model, args.prompt, args.device)
    # no_grad, not inference_mode: under inference_mode Transformers 5.17's paged generate fails
    # every request (its worker thread updates tensors made here) and returns no new tokens.
    with torch.no_grad():
        prefix = fill_prefix(model, inputs["input_ids"])
        for call in range(1, args.calls + 1):
            start = time.perf_counter()
            kwargs = generate_kwargs(args.exact_length)
            if prefix is not None:  # generate appends to the cache it is given: a copy per call
                cache = copy.deepcopy(prefix)
                cache.batch_repeat_interleave(inputs["input_ids"].shape[0])
                kwargs[cache_argument(model)] = cache
            out = model.generate(**inputs, **kwargs)
            elapsed_ms = (time.perf_counter() - start) * 1000
            if out.dim() == 3:  # paged: generate returns [1, batch, length]
                out = out[0]
            new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
            print(f"call {{call}}: {{out.shape[0]}} x {{new_tokens}} new tokens in {{elapsed_ms:.1f}} ms")


if __name__ == "__main__":
    main()
'''


def _literal(value: Any) -> str:
    """A Python literal of plain data, indented to sit after ``NAME = ``."""
    return pprint.pformat(value, width=88, sort_dicts=False)


def settings_script(context: ScriptContext) -> str:
    """The text of ``recommended.py`` for the context's candidate."""
    candidate = context.candidate
    assert isinstance(candidate, Candidate)
    model, workload = context.model, context.workload
    return _SCRIPT.format(
        hub_id=model.hub_id,
        revision=model.revision,
        weights=context.weights,
        trust_remote_code=model.trust_remote_code,
        device=context.device,
        profile=context.profile,
        study=context.study,
        label=context.label,
        ttft=context.values["ttft_ms"],
        tput=context.values["decode_tok_s"],
        mem=context.values["peak_mem_mb"],
        model_kwargs=_literal(plain(candidate.model_kwargs())),
        generate_kwargs=_literal(plain(candidate.generate_kwargs(workload.prompt_tokens, workload.new_tokens))),
        batch_size=candidate.batch_size,
        prompt_tokens=workload.prompt_tokens,
        new_tokens=workload.new_tokens,
        shared_prefix_tokens=workload.shared_prefix_tokens if candidate.prefix_reuse else 0,
        architecture=_literal(plain(model.architecture)),
    )


def paste_snippet(
    model_id: str, candidate: Candidate, prompt_tokens: int | None = None, new_tokens: int | None = None
) -> str:
    """Lines to paste: the same kwargs recommended.py and recommended.yaml carry."""
    generate = candidate.generate_kwargs(prompt_tokens, new_tokens)
    load = f"model = AutoModelForCausalLM.from_pretrained({model_id!r}, {call_args(candidate.model_kwargs())})\n"
    if candidate.prefix_reuse:  # recommended.py has the whole recipe (kvopt.engines.transformers.prefix)
        # The name is the installed Transformers' (5.25 renamed past_key_values to cache).
        cache = generate_cache_keyword()
        rows = "system_ids" if candidate.batch_size == 1 else f"system_ids.expand({candidate.batch_size}, -1)"
        return (
            load + "prefix = DynamicCache(config=model.config)\n"
            # no_grad: a cache filled while autograd records cannot be deep-copied.
            "with torch.no_grad():  # once: the prompt prefix every request shares\n"
            f"    model(input_ids={rows}, {cache}=prefix)\n"
            f"out = model.generate(**inputs, {cache}=copy.deepcopy(prefix))"
            f"  # inputs: {candidate.batch_size} prompt(s) per batch, each starting with system_ids"
        )
    return (
        load + f"out = model.generate(**inputs, {call_args(generate)})"
        f"  # inputs: {candidate.batch_size} prompt(s) per batch"
    )
