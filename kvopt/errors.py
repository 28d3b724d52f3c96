"""Errors that kvopt reports to the user as one clear message, without a traceback.

Foundation: imports nothing from kvopt. :func:`print_error` is the one way a command
prints such a message.
"""

from __future__ import annotations

__all__ = ["KvoptError", "ConfigError", "StorageError", "DeviceError", "print_error"]


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


def print_error(message: str) -> None:
    """Print ``kvopt: error: <message>`` on stderr, the prefix in bold red on a terminal.

    The message is printed as is (never read as rich markup) and never wrapped, so a
    path or URL in it stays whole and can be copied.
    """
    from rich.console import Console  # imported here: ``import kvopt.errors`` must stay cheap
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text.assemble(("kvopt: error: ", "bold red"), message))
