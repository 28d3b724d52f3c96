"""Tiny GGUF files for tests: a random Llama, and the project's trained GPT-2 converted.

The GGUF is written directly with ``gguf.GGUFWriter`` (no llama.cpp converter script):
metadata keys, tensor names and a byte-level BPE vocabulary that llama.cpp loads.

- :func:`write_tiny_gguf` - a Llama-architecture model with random weights from a fixed
  seed: RMSNorm, RoPE, SwiGLU, grouped-query attention. The default head size is 32, the
  width of a quantized block, so every KV-cache type this build knows can hold it.
- :func:`write_trained_gguf` - tests/data/tiny-shakespeare (a 2-layer GPT-2 trained on
  Shakespeare, see scripts/make_tiny_model.py) as a GGUF of architecture ``gpt2``, with its
  own BPE vocabulary and merges, so its next-token distributions mean something. Its
  heads are 16 wide (64 / 4), and no quantized cache works on 16-wide heads: with flash
  attention llama.cpp refuses them (a 32-wide block must divide the head size); without
  it a quantized V is refused, and a quantized K is accepted but computes wrong attention
  scores (q8_0, q5_0 and q4_0 K all give the same mean KL of 0.42 nats vs f16, where f32
  gives 7e-9). So it is written, by default, with every width doubled in a way that
  keeps its function exactly (:func:`_widened`): heads of 32, the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # gguf comes with the llamacpp extra: imported where used
    from gguf import GGUFWriter

__all__ = ["TINY_SHAKESPEARE", "EOS", "byte_alphabet", "write_tiny_gguf", "write_trained_gguf"]

TINY_SHAKESPEARE = Path(__file__).resolve().parents[3] / "tests" / "data" / "tiny-shakespeare"
EOS = "<|endoftext|>"

# llama.cpp token types (llama_token_type in llama.h): what the vocabulary marks as text.
_NORMAL, _CONTROL = 1, 3

# Frequent English pairs: a few merges give the random model's vocabulary multi-byte tokens,
# so tokenize/detokenize go through the BPE path as they do for a real model.
_PAIRS = "th he in er an re on at en nd ti es or te of ed is it al ar st to nt ng se ha as ou io le ve co me de hi ri"


def byte_alphabet() -> list[str]:
    """GPT-2's 256 printable stand-ins for bytes, in byte order (byte-level BPE's base tokens)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:  # control bytes and space map past 255, as GPT-2 does
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a small byte-level BPE: bytes, pair merges, one control token."""
    alphabet = byte_alphabet()
    space = alphabet[ord(" ")]
    merges = [f"{pair[0]} {pair[1]}" for pair in _PAIRS.split()]
    merges += [f"{space} {c}" for c in "tawsohbmfi"]  # " t", " a", ...: word starts
    tokens = [*alphabet, *(m.replace(" ", "") for m in merges), EOS]
    types = [_NORMAL] * (len(tokens) - 1) + [_CONTROL]
    return tokens, types, merges


def _writer(path: Path, arch: str) -> GGUFWriter:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    return gguf.GGUFWriter(str(path), arch=arch)


def _add_bpe(writer: GGUFWriter, tokens: list[str], types: list[int], merges: list[str], eos_id: int) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's split regex: what a ByteLevel pre-tokenizer uses
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)


def _finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_gguf(
    path: str | Path,
    *,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    ffn: int = 256,
    context: int = 2048,
    seed: int = 0,
    f16: bool = True,
    trained: bool = False,
) -> Path:
    """Write a random Llama GGUF (or, with ``trained``, :func:`write_trained_gguf`) to ``path``.

    Weights are drawn with unit-variance-preserving scales (std 1/sqrt(fan-in)) so the
    activations neither vanish nor blow up through the layers, and the logits spread
    over a few units: a different KV cache then moves the next-token distribution by an
    amount that can be measured. Matrices are f16 (``f16``) or f32; norms are always f32,
    as llama.cpp's converter writes them.
    """
    if trained:
        return write_trained_gguf(path, f16=f16)
    import gguf

    path = Path(path)
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden {hidden} must split into {heads} heads, and those into {kv_heads} KV groups")
    head_dim = hidden // heads
    tokens, types, merges = _tiny_vocab()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    dtype = np.float16 if f16 else np.float32

    def matrix(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        # numpy (rows, cols) is ggml's {cols, rows}: rows = outputs, cols = inputs
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(dtype)

    writer = _writer(path, "llama")
    writer.add_name("kvopt-tiny-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    _add_bpe(writer, tokens, types, merges, eos_id=vocab - 1)

    ones = np.ones(hidden, dtype=np.float32)
    writer.add_tensor("token_embd.weight", (rng.standard_normal((vocab, hidden))).astype(dtype))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_q.weight", matrix(heads * head_dim, hidden, 2.0))
        writer.add_tensor(f"blk.{i}.attn_k.weight", matrix(kv_heads * head_dim, hidden, 2.0))
        writer.add_tensor(f"blk.{i}.attn_v.weight", matrix(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", matrix(hidden, heads * head_dim))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", matrix(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", matrix(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", matrix(hidden, ffn))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", matrix(vocab, hidden, 3.0))
    _finish(writer)
    return path


def _widened(weights: dict[str, np.ndarray], config: dict[str, Any], r: int) -> dict[str, np.ndarray]:
    """The same GPT-2 with every width r times larger and the same function (r = 1: as is).

    The residual stream becomes r copies of itself. LayerNorm over r copies has the same
    mean and variance, so it is unchanged with its weights tiled; a matrix reading the
    stream splits its input weights 1/r across the copies; one writing it writes every
    copy. Each head's q, k and v become r copies of themselves (head size r·d): q·k grows
    by r and llama.cpp scales by 1/sqrt(r·d), so q is divided by sqrt(r) to keep the scores
    exactly. The attention output's copies are read 1/r each. Matrices here are (out, in).
    """
    n, heads = config["n_embd"], config["n_head"]
    d = n // heads
    # new q/k/v row h*r*d + c*d + j is old row h*d + j: each head repeated r times, in place
    rows = np.array([h * d + j for h in range(heads) for _ in range(r) for j in range(d)])

    def read(w: np.ndarray) -> np.ndarray:  # input side: split across the copies
        return np.tile(w, (1, r)) / r

    def write(w: np.ndarray) -> np.ndarray:  # output side: every copy of the stream
        return np.tile(w, (r, 1)) if w.ndim == 2 else np.tile(w, r)

    out = {
        "token_embd.weight": np.tile(weights["transformer.wte.weight"], (1, r)),
        "position_embd.weight": np.tile(weights["transformer.wpe.weight"], (1, r)),
        "output_norm.weight": write(weights["transformer.ln_f.weight"]),
        "output_norm.bias": write(weights["transformer.ln_f.bias"]),
        # tied in the source; untied here, since the stream holds r copies of what wte reads
        "output.weight": read(weights["transformer.wte.weight"]),
    }
    for i in range(config["n_layer"]):
        hf, blk = f"transformer.h.{i}.", f"blk.{i}."
        qkv_w = weights[hf + "attn.c_attn.weight"].T  # Conv1D (in, out) -> (out, in)
        qkv_b = weights[hf + "attn.c_attn.bias"]
        q_scale = [1 / np.sqrt(r), 1.0, 1.0]
        out[blk + "attn_qkv.weight"] = np.concatenate(
            [read(qkv_w[k * n : (k + 1) * n][rows]) * s for k, s in enumerate(q_scale)]
        )
        out[blk + "attn_qkv.bias"] = np.concatenate(
            [qkv_b[k * n : (k + 1) * n][rows] * s for k, s in enumerate(q_scale)]
        )
        out[blk + "attn_output.weight"] = write(weights[hf + "attn.c_proj.weight"].T[:, rows] / r)
        out[blk + "attn_output.bias"] = write(weights[hf + "attn.c_proj.bias"])
        for norm, ln in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            out[blk + norm + ".weight"] = write(weights[hf + ln + ".weight"])
            out[blk + norm + ".bias"] = write(weights[hf + ln + ".bias"])
        out[blk + "ffn_up.weight"] = read(weights[hf + "mlp.c_fc.weight"].T)
        out[blk + "ffn_up.bias"] = weights[hf + "mlp.c_fc.bias"]
        out[blk + "ffn_down.weight"] = write(weights[hf + "mlp.c_proj.weight"].T)
        out[blk + "ffn_down.bias"] = write(weights[hf + "mlp.c_proj.bias"])
    return out


def write_trained_gguf(
    path: str | Path, *, source: str | Path = TINY_SHAKESPEARE, head_dim: int | None = 32, f16: bool = False
) -> Path:
    """Convert a Transformers GPT-2 folder (safetensors + tokenizer.json) to a ``gpt2`` GGUF.

    HF GPT-2 stores its projections as Conv1D, (inputs, outputs): they are transposed to
    ggml's (outputs, inputs) layout; the BPE vocabulary and merges are carried over.

    ``head_dim``: the head size to reach. tiny-shakespeare's heads are 16 wide, and
    llama.cpp cannot quantize a 16-wide head's cache: with flash attention it refuses (a
    32-wide block must divide the head size); without it, a quantized V is refused and a
    quantized K is accepted but computes wrong attention scores (every K type gives the
    same, large divergence from f16). So by default the model is written widened to heads
    of 32 (:func:`_widened`: an exact re-parametrisation, same logits up to rounding), on
    which every cache type works. ``head_dim=None`` writes the model as it is. Default f32
    (about 1 MB): the fidelity tests then see only the cache's error.
    """
    import gguf
    from safetensors.numpy import load_file

    path, source = Path(path), Path(source)
    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{source}: model_type {config.get('model_type')!r}, only gpt2 is converted")
    d = config["n_embd"] // config["n_head"]
    r = 1 if head_dim is None or head_dim <= d else head_dim // d
    if r * d != max(d, head_dim or d):
        raise ValueError(f"head_dim {head_dim} is not a multiple of the model's head size {d}")
    tensors = _widened(load_file(str(source / "model.safetensors")), config, r)
    tok = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = dict(tok["model"]["vocab"])
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    special = {added["id"] for added in tok.get("added_tokens", []) if added.get("special")}
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    types = [_CONTROL if i in special else _NORMAL for i in range(len(tokens))]
    # tokenizers >= 0.20 writes merges as pairs; older files as "a b" strings
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    dtype = np.float16 if f16 else np.float32

    writer = _writer(path, "gpt2")
    writer.add_name("kvopt-tiny-shakespeare" + (f"-x{r}" if r > 1 else ""))
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"] * r)
    writer.add_block_count(config["n_layer"])
    writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config["layer_norm_epsilon"])
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    _add_bpe(writer, tokens, types, merges, eos_id=config.get("eos_token_id", 0))
    for name, array in tensors.items():
        # 1-D tensors (norms, biases) stay f32, as llama.cpp's own converter keeps them
        kind = dtype if array.ndim > 1 else np.float32
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=kind))
    _finish(writer)
    return path
