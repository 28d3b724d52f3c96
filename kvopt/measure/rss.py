"""Peak resident set size (RSS) of this process over a block of work.

On Linux the kernel keeps the high-water mark (VmHWM) exactly, and writing 5 to
/proc/self/clear_refs resets it: so the peak of a block is exact, however short the spike.
Where that is unavailable, a thread samples RSS every millisecond instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["PeakRSS", "current_rss_bytes"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def current_rss_bytes() -> int:
    """This process's resident set size now, in bytes."""
    return int(psutil.Process().memory_info().rss)


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_hwm_bytes() is not None


class PeakRSS:
    """``with PeakRSS() as peak: work()`` then ``peak.bytes`` and ``peak.method``."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.bytes = 0
        self.start_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        self.start_bytes = current_rss_bytes()
        if _reset_hwm():
            self.method = "kernel high-water mark (VmHWM, reset before the block)"
        else:
            self.method = f"sampled every {self.interval_s * 1000:g} ms"
            self.bytes = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(self.interval_s):
            self.bytes = max(self.bytes, int(process.memory_info().rss))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self.bytes, current_rss_bytes())
        else:
            self.bytes = _vm_hwm_bytes() or current_rss_bytes()
