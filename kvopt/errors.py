"""Errors that kvopt reports to the user as one clear message, without a traceback."""

from __future__ import annotations

__all__ = ["KvoptError", "ConfigError", "StorageError", "DeviceError"]


class KvoptError(Exception):
    """A problem the user can fix; the CLI prints it and exits with status 2."""


class ConfigError(KvoptError):
    """One or more invalid config fields, each line naming field, value and what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(problems)} {noun}):\n{lines}")


class StorageError(KvoptError):
    """The study storage cannot be opened or does not fit this run."""


class DeviceError(KvoptError):
    """The requested device does not exist on this machine."""
