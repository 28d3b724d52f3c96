"""``python -m kvopt info``: the machine, library versions, and what runs here (and why not)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from rich.console import Console
from rich.table import Table

from kvopt.config import ATTN_IMPLEMENTATIONS, CACHE_IMPLEMENTATIONS, DTYPES, QUANTIZED_BACKENDS, validate
from kvopt.errors import KvoptError
from kvopt.machine import machine_info, resolve_device
from kvopt.probe import default_attn_implementation, probe
from kvopt.space import Candidate

__all__ = ["info_command"]


def info_command(overrides: list[str]) -> int:
    from kvopt.cli import conf_dir, quiet_libraries

    quiet_libraries()
    console = Console()
    err = Console(stderr=True)
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3", job_name="kvopt"):
            cfg = validate(compose(config_name="config", overrides=overrides))
        device = resolve_device(cfg.device)
    except (KvoptError, HydraException) as exc:
        err.print(f"[bold red]kvopt: error:[/bold red] {exc}", highlight=False)
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
        cfg.model, device, choices, baseline,
        QUANTIZED_BACKENDS, cfg.search_space.max_dtype_slowdown,
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
