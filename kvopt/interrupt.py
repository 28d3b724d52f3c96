"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT
arrives — sometimes inside a weakref callback or ``__del__`` run by the garbage
collector (SQLAlchemy has both), where the exception is printed as "ignored" and
swallowed, and the study carries on. kvopt therefore also remembers the request and
raises it again at safe points: before every ``generate`` call and after every trial.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["catch_interrupts", "raise_if_interrupted", "interrupt_requested"]

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


def interrupt_requested() -> bool:
    """Whether Ctrl-C came while :func:`catch_interrupts` was active."""
    return _requested.is_set()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt at a safe point if Ctrl-C came and was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def catch_interrupts() -> Iterator[None]:
    """Remember Ctrl-C for the duration; a no-op off the main thread or if SIGINT is ignored.

    A SIGINT the parent chose to ignore (``nohup``-style background jobs) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    _requested.clear()
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
