"""Record a grid: every candidate of a real search space, measured with kvopt's protocol.

Each candidate is measured as a study trial would measure it (kvopt.protocol: first call
timed apart with the memory probe, warm-up, adaptive repetitions), in a shuffled order, and the
table — raw repetitions, medians, memory, failures, untimed costs, the machine, versions,
workload and the 1-minute load average before and after — goes to
benchmarks/grid_<name>.json and .csv. The replay benchmarks (bench_search, bench_pruning,
bench_gain) answer from these tables.

    python scripts/record_grid.py --model tiny-llama --name tiny-llama          # 48 candidates
    python scripts/record_grid.py --model gpt2 --name gpt2-short --space gpt2    # 48 candidates
    python scripts/record_grid.py --model tiny-llama --profile ci-micro --space large \
        --name tiny-llama-large                                                  # 144 candidates
    python scripts/make_tiny_gguf.py /tmp/tiny.gguf
    python scripts/record_grid.py --space llamacpp --name llamacpp-tiny-chat-agent \
        model.gguf=/tmp/tiny.gguf measure.max_seconds=6                          # 48 candidates
    python scripts/record_grid.py --profile rag --space gqa-long --name small-llama-gqa-rag  # 80
    python scripts/record_grid.py --profile chat-agent --space mha-long \
        --name small-llama-mha-chat-agent                                        # 50 candidates

Overrides after ``--`` are kvopt config overrides (as on kvopt's command line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kvopt_bench.common import compose_config, script_main, write_csv, write_json

REPO = Path(__file__).resolve().parent.parent
# A 4-layer Llama with random weights (the issue-24 grids name its KV heads).
SMALL_LLAMA = [
    "model.architecture.hidden_size=256",
    "model.architecture.intermediate_size=688",
    "model.architecture.num_hidden_layers=4",
    "model.architecture.num_attention_heads=8",
    "model.architecture.head_dim=32",
    "model.architecture.max_position_embeddings=1024",
    "model.architecture.vocab_size=4096",
]
# The spaces of docs/benchmarks.md. gpt2 keeps float32 only: on this CPU bf16/fp16 run
# ~100x slower at gpt2's width (the dtype probe drops them), so caches vary instead.
SPACES = {
    "three-dtypes": [
        "search_space.cache_implementation=[dynamic,static]",
        "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32,bfloat16,float16]",
        "search_space.batch_size=[1,2,4,8]",
    ],
    "gpt2": [
        "search_space.cache_implementation=[dynamic,static,quantized]",
        "search_space.static.compile=[false,true]",
        "search_space.quantized.backends=[fp8]",
        "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32]",
        "search_space.batch_size=[1,2,4,8,16,32]",
    ],
    # The large grid (issue 13): a GPU-like default space where search matters, 144 candidates.
    "large": [
        "search_space.cache_implementation=[dynamic,static,quantized]",
        "search_space.static.compile=[false,true]",
        "search_space.quantized.backends=[fp8]",
        "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32,bfloat16,float16]",
        "search_space.batch_size=[1,2,4,8,16,32]",
        "search_space.max_dtype_slowdown=null",
    ],
    # The llama.cpp engine (issue 23): cache types with flash attention, batch and micro-batch, one
    # thread each (48 candidates; llamacpp-threads adds 2 threads: 192). Give the GGUF as an
    # override: model.gguf=PATH (scripts/make_tiny_gguf.py writes a tiny one).
    "llamacpp": [
        "engine=llamacpp",
        "engine.knobs.type_k=[f16,q8_0,q4_0]",
        "engine.knobs.type_v=[f16,q8_0,q4_0]",
        "engine.knobs.flash_attn=[false,true]",
        "engine.knobs.n_batch=[512,2048]",
        "engine.knobs.n_ubatch=[128,512]",
        "engine.knobs.n_threads=[1]",
        "engine.knobs.n_threads_batch=[1]",
    ],
    "llamacpp-threads": [
        "engine=llamacpp",
        "engine.knobs.type_k=[f16,q8_0,q4_0]",
        "engine.knobs.type_v=[f16,q8_0,q4_0]",
        "engine.knobs.flash_attn=[false,true]",
        "engine.knobs.n_batch=[512,2048]",
        "engine.knobs.n_ubatch=[128,512]",
        "engine.knobs.n_threads=[1,2]",
        "engine.knobs.n_threads_batch=[1,2]",
    ],
    # Issue 24's shapes: a 4-layer Llama (random weights) with a 512-token prompt that shares most
    # of it as a prefix, batch to 16, the fp8 quantized cache and bfloat16 (AMX CPUs run it
    # natively; lossy settings need quality.allow_unverified with random weights). gqa-long: 8
    # query heads on 2 KV heads, 512-token prompts, 32 new tokens (80 candidates); mha-long: 8
    # KV heads, float32 only, the static cache compiled or not, 256 + 64 tokens (50 candidates).
    "gqa-long": [
        *SMALL_LLAMA,
        "model.name=small-llama-gqa",
        "model.architecture.num_key_value_heads=2",
        "profile.context_lengths=[512]",
        "profile.output_lengths=[32]",
        "search_space.cache_implementation=[dynamic,static,quantized]",
        "search_space.quantized.backends=[fp8]",
        "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32,bfloat16]",
        "search_space.batch_size=[1,2,4,8,16]",
        "search_space.max_dtype_slowdown=null",
        "quality.allow_unverified=true",
    ],
    "mha-long": [
        *SMALL_LLAMA,
        "model.name=small-llama-mha",
        "model.architecture.num_key_value_heads=8",
        "profile.context_lengths=[256]",
        "profile.output_lengths=[64]",
        "search_space.cache_implementation=[dynamic,static,quantized]",
        "search_space.static.compile=[false,true]",
        "search_space.quantized.backends=[fp8]",
        "search_space.attn_implementation=[eager,sdpa]",
        "search_space.dtype=[float32]",
        "search_space.batch_size=[1,2,4,8,16]",
        "quality.allow_unverified=true",
    ],
    "default": [],
}
# No study storage, and no device lock held for the whole grid (other kvopt processes on
# this machine would wait for it); the load average is recorded instead.
FIXED = ["storage=memory", "scale.shared_device=flag"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--profile", default="chat-agent")
    parser.add_argument("--space", choices=sorted(SPACES), default="three-dtypes")
    parser.add_argument("--name", help="output name (default: <model>-<profile>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the measurement order")
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks")
    parser.add_argument("overrides", nargs="*", help="kvopt config overrides, e.g. profile.context_lengths=[64]")
    args = parser.parse_args()
    overrides = [*SPACES[args.space], *args.overrides, *FIXED]
    cfg = compose_config(args.model, args.profile, overrides)

    def progress(i: int, n: int, row: dict) -> None:
        what = (
            f"ttft {row['ttft_ms_median']:.1f} ms, {row['decode_tok_s_median']:.1f} tok/s, "
            f"{row['peak_mem_mb']:.1f} MB, n={row['n']}"
            if row["status"] == "ok"
            else row["reason"]
        )
        print(
            f"[{i + 1}/{n}] {row['candidate']}: {what} ({row['wall_s']:.1f} s, load {row['load_1min_before']:.2f})",
            flush=True,
        )

    from kvopt_bench.grid import record_grid

    grid = record_grid(cfg, overrides, order_seed=args.seed, on_row=progress)
    name = args.name or f"{args.model}-{args.profile}"
    out = args.out_dir / f"grid_{name}.json"
    write_json(out, grid)
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in grid["rows"]]
    write_csv(out.with_suffix(".csv"), flat)
    print(
        f"{grid['candidates']} candidates ({grid['failed']} failed) in {grid['grid_wall_s']:.0f} s; "
        f"load average {grid['load_1min_before']:.2f} before, {grid['load_1min_after']:.2f} after"
    )
    print(f"written: {out} and {out.with_suffix('.csv').name}", file=sys.stderr)


if __name__ == "__main__":
    script_main(main)
