"""Inference engines kvopt can tune, found by name.

Each engine is a folder here (``transformers/``, ``llamacpp/``) that implements
:mod:`kvopt.engines.base`. The core never imports an engine package: it asks this registry
for one by the name a run or a stored study gives (``engine=…``), so an engine's libraries
are imported only when that engine is used. A new engine is a new folder and a line in
:data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ENGINES", "DEFAULT_ENGINE", "engine_class", "candidate_type"]

# Engine name -> the module whose ENGINE is its kvopt.engines.base.Engine subclass.
ENGINES = {
    "transformers": "kvopt.engines.transformers.engine",
    "llamacpp": "kvopt.engines.llamacpp.engine",
}
# The engine of a run that names none, and of studies stored before engines had names.
DEFAULT_ENGINE = "transformers"


def engine_class(name: str) -> Any:
    """The :class:`kvopt.engines.base.Engine` subclass called ``name`` (KeyError: no such engine)."""
    return importlib.import_module(ENGINES[name]).ENGINE


def candidate_type(name: str) -> Any:
    """The :class:`kvopt.space.Candidate` subclass of engine ``name``."""
    return engine_class(name).candidate_type
