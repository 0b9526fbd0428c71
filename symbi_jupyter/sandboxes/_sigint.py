"""SIGINT as an event while a run is watched, not a KeyboardInterrupt raised wherever
the host happens to be (relaying output, reading a status line, between two calls).

A KeyboardInterrupt that lands outside the wait lets the run go on unwatched, its
pipes closed, until it ends by itself; the latch makes the stop button a message the
run loop handles in one place: stop the code, collect what it left, report.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

#: What signal.signal() takes and returns.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class SigintLatch:
    """Within ``with``, in the main thread, SIGINT sets :attr:`event` and makes
    :attr:`fd` readable (for a selector). It takes over only Python's own handler,
    the one that raises KeyboardInterrupt (IPython, ipykernel during a request,
    scripts); a host that ignores SIGINT or handles it its own way keeps doing so,
    and then :attr:`fd` is None."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.fd: int | None = None
        self._write_fd: int | None = None
        self._previous: _Handler = None

    def __enter__(self) -> SigintLatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return self
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        assert self._write_fd is not None  # installed only with the pipe
        self.event.set()
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        """Empty :attr:`fd` (the event stays set)."""
        assert self.fd is not None  # only a latch that took over SIGINT is drained
        with contextlib.suppress(OSError):
            while os.read(self.fd, 64):
                pass

    def is_set(self) -> bool:
        return self.event.is_set()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.fd is None:
            return
        assert self._write_fd is not None  # made with fd
        signal.signal(signal.SIGINT, self._previous)
        os.close(self.fd)
        os.close(self._write_fd)
        self.fd = self._write_fd = None
