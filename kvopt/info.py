"""``python -m kvopt info``: the machine, library versions, and what runs here (and why not)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kvopt.compose import compose_config
from kvopt.config import ATTN_IMPLEMENTATIONS, CACHE_IMPLEMENTATIONS, DTYPES, QUANTIZED_BACKENDS
from kvopt.engine.source import resolve_config
from kvopt.env import quiet_libraries
from kvopt.errors import KvoptError, print_error
from kvopt.machine import machine_info, resolve_device
from kvopt.probe import default_attn_implementation, probe
from kvopt.space import Candidate

__all__ = ["info_command"]


def info_command(overrides: list[str]) -> int:
    """``python -m kvopt info [overrides]``: print the machine and what runs on it.

    Args:
        overrides: Hydra-style overrides (``model=gpt2``, ``device=cuda:1``) as for a run.

    Returns:
        The exit status: 0, or 2 after printing what is wrong with the input.
    """
    quiet_libraries()
    console = Console()
    try:
        cfg, _ = resolve_config(compose_config(list(overrides)))
        device = resolve_device(cfg.device)
    except KvoptError as exc:
        print_error(str(exc))
        return 2

    info = machine_info(device)
    console.print("[bold]machine[/bold]")
    for key in ("hostname", "os", "cpu", "cpu_cores_logical", "torch_threads", "memory_gb", "device"):
        console.print(f"  {key:<18} {info[key]}", highlight=False)
    for gpu in info["gpus"]:
        console.print(f"  gpu {gpu['index']:<14} {gpu['name']}, {gpu['memory_gb']} GB", highlight=False)
    if not info["gpus"]:
        console.print("  gpu                none visible to torch", highlight=False)
    console.print("[bold]versions[/bold]")
    for name, version in info["versions"].items():
        console.print(f"  {name:<18} {version}", highlight=False)

    default_attn = default_attn_implementation(cfg.model, device)
    baseline = Candidate("dynamic", default_attn, cfg.model.dtype, 1)
    choices = {
        "cache_implementation": list(CACHE_IMPLEMENTATIONS),
        "attn_implementation": list(ATTN_IMPLEMENTATIONS),
        "dtype": list(DTYPES),
    }
    result = probe(
        cfg.model,
        device,
        choices,
        baseline,
        QUANTIZED_BACKENDS,
        cfg.search_space.max_dtype_slowdown,
    )
    table = Table(
        title=f"what runs here for {cfg.model.name} on {device} (baseline: {baseline.label})",
        title_justify="left",
    )
    table.add_column("choice")
    table.add_column("runs")
    table.add_column("why not")
    for key in result.available:
        table.add_row(key, "yes", "")
    for key, reason in result.unavailable.items():
        table.add_row(key, "[red]no[/red]", reason)
    console.print(table)
    return 0
