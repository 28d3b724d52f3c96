"""Command line: ``python -m kvopt [overrides]`` (Hydra) and ``python -m kvopt info``."""

from __future__ import annotations

import logging
import shutil
import sys
import warnings
from importlib import resources
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from kvopt.config import validate
from kvopt.errors import KvoptError

__all__ = ["main", "conf_dir"]


def conf_dir() -> str:
    """The shipped Hydra configs: ``kvopt/conf`` in a wheel, ``conf/`` in a source checkout."""
    try:
        packaged = Path(str(resources.files("kvopt.conf")))
        if (packaged / "config.yaml").is_file():
            return str(packaged)
    except ModuleNotFoundError:
        pass
    return str(Path(__file__).resolve().parent.parent / "conf")


def quiet_libraries() -> None:
    """Keep the terminal for kvopt's own lines; library chatter goes to the log file."""
    import optuna
    import transformers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _fail(message: str) -> None:
    Console(stderr=True).print(f"[bold red]kvopt: error:[/bold red] {message}", highlight=False)


def _remove_half_written_run_dir() -> None:
    """Bad input leaves nothing behind: drop Hydra's run folder if it holds only Hydra's files."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    logging.shutdown()
    if out.is_dir() and all(p.name in {".hydra", "kvopt.log"} for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        parent = out.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


@hydra.main(config_path=conf_dir(), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from kvopt.runner import prepare, tune

    quiet_libraries()
    console = Console()
    try:
        settings = validate(cfg)
        prepared = prepare(settings)
    except KvoptError as exc:
        _fail(str(exc))
        _remove_half_written_run_dir()
        sys.exit(2)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        tune(settings, output_dir=output_dir, console=console, prepared=prepared)
    except KeyboardInterrupt:
        console.print("interrupted: the current trial was marked failed; results above are stored")
        sys.exit(130)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "info":
        from kvopt.info import info_command

        sys.exit(info_command(args[1:]))
    _hydra_main()


if __name__ == "__main__":
    main()
