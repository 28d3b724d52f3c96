"""Command line: ``python -m kvopt [overrides]`` (Hydra) and subcommands (``info``, ``report``,
``dashboard``, ``compare``) that work on stored studies rather than running one."""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from kvopt.compose import unknown_group_options
from kvopt.config import validate
from kvopt.env import quiet_libraries
from kvopt.errors import ConfigError, KvoptError, print_error
from kvopt.paths import conf_dir

__all__ = ["main", "SUBCOMMANDS"]


def _remove_half_written_run_dir() -> None:
    """Bad input leaves nothing behind: drop Hydra's run folder if it holds only Hydra's files."""
    try:
        out = Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return
    logging.shutdown()
    if out.is_dir() and all(p.name in {".hydra", "kvopt.log"} for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        # Also the folders Hydra made above it (outputs/<model>-<profile>/), once empty.
        cwd = Path.cwd().resolve()
        parent = out.resolve().parent
        while parent != cwd and cwd in parent.parents and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


@hydra.main(config_path=conf_dir(), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from kvopt.report.terminal import command_console
    from kvopt.runner import prepare, tune

    quiet_libraries()
    console = command_console()  # a terminal's width; a piped log's tables are not cut at 80 columns
    try:
        settings = validate(cfg)
        prepared = prepare(settings)
    except KvoptError as exc:
        print_error(str(exc))
        _remove_half_written_run_dir()
        sys.exit(2)
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        tune(settings, output_dir=output_dir, console=console, prepared=prepared)
    except KeyboardInterrupt:
        console.print("interrupted: the current trial was marked failed; results above are stored")
        sys.exit(130)


# Subcommand -> "module:function"; each function takes the remaining arguments and returns
# the exit status. Imported only when used, so ``--help`` and bad input stay fast.
SUBCOMMANDS = {
    "info": "kvopt.info:info_command",
    "report": "kvopt.commands.report:report_command",
    "dashboard": "kvopt.commands.dashboard:dashboard_command",
    "compare": "kvopt.commands.compare:compare_command",
    "profiles": "kvopt.commands.profiles:profiles_command",
}


def main() -> None:
    """Run ``python -m kvopt ARGS``: a subcommand, or a study from Hydra overrides; exits with its status."""
    args = sys.argv[1:]
    if args and args[0] in SUBCOMMANDS:
        module, _, function = SUBCOMMANDS[args[0]].partition(":")
        sys.exit(getattr(importlib.import_module(module), function)(args[1:]))
    problems = unknown_group_options(args, conf_dir())
    if problems:
        print_error(str(ConfigError(problems)))
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
