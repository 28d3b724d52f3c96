"""The process environment kvopt runs in: library log levels and warnings.

Foundation: imports nothing from kvopt, so every layer (the CLI, a spawned trial process,
a benchmark script) quiets the libraries the same way.
"""

from __future__ import annotations

import warnings

__all__ = ["quiet_libraries"]


def quiet_libraries() -> None:
    """Keep the terminal for kvopt's own lines; library chatter goes to the log file."""
    import optuna  # imported here: ``import kvopt.env`` must stay cheap
    import transformers

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # kvopt prints each trial itself
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
