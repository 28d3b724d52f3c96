"""A chosen llama.cpp candidate, written out for use without kvopt: Python, or CLI flags.

:func:`python_snippet` is a standalone script (imports only llama_cpp) that builds
``llama_cpp.Llama`` with the candidate's arguments and generates a few tokens;
:func:`cli_flags` is the same candidate as flags of llama.cpp's own tools (llama-server,
llama-cli, llama-bench), spelled as the vendored common/arg.cpp defines them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvopt.engines.llamacpp.session import SETTINGS, context_cells

__all__ = ["cli_flags", "python_snippet"]

# Where llama.cpp's tools and the Python binding default differently, the flag is written
# even when the candidate left the setting out, so both run what was measured:
# flash attention (binding: off, tools: auto), GPU layers (binding: 0, tools: all that
# fit) and the logical batch (binding: 512, tools: 2048).
_BINDING_DEFAULTS = {"flash_attn": False, "n_gpu_layers": 0, "n_batch": 512}


def _check(settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown llama.cpp settings {unknown}; allowed: {', '.join(SETTINGS)}")
    return {k: v for k, v in settings.items() if v is not None}


def _type_arg(key: str, name: str) -> str:
    """``type_k=llama_cpp.GGML_TYPE_Q8_0,``, or the number where the binding lacks the constant (bf16)."""
    import llama_cpp

    from kvopt.engines.llamacpp.build import build_info

    constant = f"GGML_TYPE_{name.upper()}"
    if hasattr(llama_cpp, constant):
        return f"{key}=llama_cpp.{constant},"
    return f"{key}={build_info().cache_types[name]},  # {constant}: not exported by this llama_cpp"


def python_snippet(model_path: str | Path, settings: Mapping[str, Any], n_ctx: int) -> str:
    """A runnable script that loads the model with these settings and prints a short greedy completion."""
    values = _check(settings)
    args = [f"model_path={str(model_path)!r},", f"n_ctx={context_cells(n_ctx)},"]
    for key in SETTINGS:
        if key in values:
            value = values[key]
            args.append(_type_arg(key, value) if key in ("type_k", "type_v") else f"{key}={value!r},")
    args.append("verbose=False,")
    body = "".join(f"    {a}\n" for a in args)
    return (
        '"""Settings chosen by kvopt: load the model with them and generate a few tokens."""\n'
        "import llama_cpp\n"
        "\n"
        f"llm = llama_cpp.Llama(\n{body})\n"
        'out = llm.create_completion("The", max_tokens=8, temperature=0.0)\n'
        'print(repr(out["choices"][0]["text"]))\n'
        'print("completion_tokens", out["usage"]["completion_tokens"])\n'
    )


def cli_flags(settings: Mapping[str, Any], n_ctx: int | None = None) -> str:
    """The settings as llama.cpp tool flags: ``-ctk q8_0 -ctv q8_0 -fa on -b 512 -ub 512 -t 2 -tb 2 -ngl 0``.

    ``-nkvo`` is added when the KV cache stays off the GPU (``offload_kqv`` false);
    ``-c`` when ``n_ctx`` is given (rounded up to 256 as llama.cpp allocates it).
    """
    values = {**_BINDING_DEFAULTS, **_check(settings)}
    flags: list[str] = []
    if n_ctx is not None:
        flags += ["-c", str(context_cells(n_ctx))]
    for key, flag in (("type_k", "-ctk"), ("type_v", "-ctv")):
        if key in values:
            flags += [flag, str(values[key])]
    flags += ["-fa", "on" if values["flash_attn"] else "off"]
    for key, flag in (("n_batch", "-b"), ("n_ubatch", "-ub"), ("n_threads", "-t"), ("n_threads_batch", "-tb")):
        if key in values:
            flags += [flag, str(int(values[key]))]
    flags += ["-ngl", str(int(values["n_gpu_layers"]))]
    if values.get("offload_kqv") is False:
        flags.append("-nkvo")
    return " ".join(flags)
