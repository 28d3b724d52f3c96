"""``python -m kvopt info``: the machine, library versions, and what runs here (and why not)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kvopt.compose import compose_config
from kvopt.engines import engine_class
from kvopt.env import quiet_libraries
from kvopt.errors import KvoptError, print_error
from kvopt.machine import machine_info, resolve_device

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
        cfg = compose_config(list(overrides))
        kind = engine_class(cfg.engine.name)
        cfg, weights = kind.resolve(cfg)
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

    engine = engine_class(cfg.engine.name)(cfg.model, weights, device, cfg.seed, cfg)
    lines = engine.info()
    if lines:
        console.print(f"[bold]{engine.name}[/bold]")
        for label, line in lines:
            console.print(f"  {label:<18} {line}", highlight=False)
    title, rows = engine.capabilities()
    table = Table(title=f"what runs here for {cfg.model.name} on {device} ({title})", title_justify="left")
    table.add_column("choice")
    table.add_column("runs")
    table.add_column("why not")
    for key, reason in rows:
        table.add_row(key, "yes" if reason is None else "[red]no[/red]", reason or "")
    console.print(table)
    return 0
