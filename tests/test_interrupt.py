"""Ctrl-C is never lost, even when Python swallows the KeyboardInterrupt it raised."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from kvopt.interrupt import catch_interrupts, interrupt_requested, raise_if_interrupted


class _SigintWhileCollected:
    """Receives SIGINT inside __del__, where Python prints 'Exception ignored' and goes on."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecode to run: the handler fires here, inside __del__
            pass


def _swallowed_interrupt() -> None:
    obj = _SigintWhileCollected()
    del obj
    gc.collect()


@pytest.fixture(autouse=True)
def _as_in_a_terminal():
    # A run started in the background of a non-interactive shell inherits SIGINT ignored
    # (and kvopt rightly keeps it so); these tests are about a terminal's Ctrl-C.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_safe_point():
    with catch_interrupts():
        _swallowed_interrupt()  # the KeyboardInterrupt died inside __del__
        assert interrupt_requested()
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    # Leaving restores the previous handler and forgets the request.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not interrupt_requested()
    raise_if_interrupted()


def test_without_the_guard_python_loses_it():
    # Why the guard exists: the same swallowed Ctrl-C leaves no trace at all.
    _swallowed_interrupt()
    assert not interrupt_requested()


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with catch_interrupts():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not interrupt_requested()
    finally:
        signal.signal(signal.SIGINT, previous)
