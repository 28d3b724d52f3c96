"""The process environment kvopt runs in: library log levels and warnings.

Foundation: imports nothing from kvopt, so every layer (the CLI, a spawned trial process,
a benchmark script) quiets the libraries the same way.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Keep the terminal for kvopt's own lines; library chatter goes to the log file."""
    import optuna  # imported here: ``import kvopt.env`` must stay cheap

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kvopt prints each trial itself
    # Transformers reads this when it is first imported (by its engine, if that engine runs);
    # one already imported is told directly. Nothing here imports an engine's library.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if (transformers := sys.modules.get("transformers")) is not None:
        transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
