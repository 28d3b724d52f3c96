"""Write a tiny GGUF for llama.cpp tests: a random Llama, or (--trained) tiny-shakespeare converted.

A thin command line over :mod:`kvopt.engines.llamacpp.tiny` (the tests call it directly):

    python scripts/make_tiny_gguf.py OUT.gguf            # random Llama: 2 layers, 4x32 heads, 2 KV heads
    python scripts/make_tiny_gguf.py OUT.gguf --trained  # tests/data/tiny-shakespeare as gpt2, heads widened to 32
    python scripts/make_tiny_gguf.py OUT.gguf --trained --head-dim 0  # ... its 16-wide heads as they are

Fixed seed; well under a second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvopt.engines.llamacpp.gguf_file import read_gguf
from kvopt.engines.llamacpp.tiny import write_tiny_gguf, write_trained_gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--trained", action="store_true", help="convert tests/data/tiny-shakespeare (gpt2)")
    parser.add_argument("--head-dim", type=int, default=32, help="--trained: widen heads to this (0: as they are)")
    parser.add_argument("--seed", type=int, default=0, help="random model: weight seed")
    parser.add_argument("--f32", action="store_true", help="random model: f32 matrices (default f16)")
    args = parser.parse_args()
    if args.trained:
        path = write_trained_gguf(args.out, head_dim=args.head_dim or None)
    else:
        path = write_tiny_gguf(args.out, seed=args.seed, f16=not args.f32)
    model = read_gguf(path)
    print(
        f"{path}: {model.architecture}, {model.layers} layers, {model.heads} heads x {model.head_dim} "
        f"({model.kv_heads} KV), vocab {model.vocab_size}, context {model.context_length}, {model.file_bytes} bytes"
    )


if __name__ == "__main__":
    main()
