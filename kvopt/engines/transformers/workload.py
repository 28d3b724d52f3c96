"""The synthetic prompts a trial runs: random token ids of the workload's exact length."""

from __future__ import annotations

import torch

# The workload itself (lengths, clamping) is knowledge, defined in kvopt.workload; named
# here too, beside the prompts made from it.
from kvopt.workload import Workload, WorkloadMix, make_mix, make_workload, max_positions

__all__ = ["Workload", "WorkloadMix", "make_mix", "make_workload", "max_positions", "make_inputs"]


def make_inputs(
    workload: Workload, batch_size: int, vocab_size: int, seed: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Random token ids (fixed seed) of exactly the workload's length, no padding.

    The first ``workload.shared_prefix_tokens`` ids are the same in every row: the prefix
    every request shares (a system prompt).
    """
    generator = torch.Generator().manual_seed(seed)
    # Ids from 1 up: 0 is often a special token; the values do not change the work done.
    ids = torch.randint(1, max(2, vocab_size), (batch_size, workload.prompt_tokens), generator=generator)
    if workload.shared_prefix_tokens:
        ids[:, : workload.shared_prefix_tokens] = ids[0, : workload.shared_prefix_tokens].clone()
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
    }
