"""SIGINT as an event while a run is watched, not a KeyboardInterrupt raised wherever
the host happens to be (relaying output, reading a status line, between two calls).

A KeyboardInterrupt that lands outside the wait lets the run go on unwatched, its
pipes closed, until it ends by itself; the latch makes the stop button a message the
run loop handles in one place: stop the code, collect what it left, report.

Runs in other threads (``orch.map``'s) get no signals: their host presses a
:class:`StopButton` instead, which every latch entered under it sees as SIGINT, so
they are stopped by the very same path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

#: What signal.signal() takes and returns.
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


_local = threading.local()


class StopButton:
    """The stop button of runs in threads other than the main one, which SIGINT never
    reaches: a run whose thread is within :meth:`applied` sees :meth:`press` as its
    latch's SIGINT, whether it started before or after the press."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latches: set[SigintLatch] = set()
        self.pressed = False

    def press(self) -> None:
        # Under the lock: a latch closes its pipe only once detached.
        with self._lock:
            self.pressed = True
            for latch in self._latches:
                latch._handle(signal.SIGINT, None)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within ``with``, this thread's latches answer to this button."""
        _local.button = self
        try:
            yield
        finally:
            _local.button = None

    def _attach(self, latch: SigintLatch) -> bool:
        """Watch ``latch``; whether the button was already pressed."""
        with self._lock:
            self._latches.add(latch)
            return self.pressed

    def _detach(self, latch: SigintLatch) -> None:
        with self._lock:
            self._latches.discard(latch)


class SigintLatch:
    """Within ``with``, in the main thread, SIGINT sets :attr:`event` and makes
    :attr:`fd` readable (for a selector). It takes over only Python's own handler,
    the one that raises KeyboardInterrupt (IPython, ipykernel during a request,
    scripts); a host that ignores SIGINT or handles it its own way keeps doing so,
    and then :attr:`fd` is None. In another thread, the :class:`StopButton` applied
    to it (if any) stands for SIGINT."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.fd: int | None = None
        self._write_fd: int | None = None
        self._previous: _Handler = None
        self._button: StopButton | None = None

    def __enter__(self) -> SigintLatch:
        if threading.current_thread() is not threading.main_thread():
            button = getattr(_local, "button", None)
            if button is not None:
                self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                self._button = button
                if button._attach(self):
                    self._handle(signal.SIGINT, None)
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
        if self._button is not None:
            self._button._detach(self)
            self._button = None
        else:
            signal.signal(signal.SIGINT, self._previous)
        os.close(self.fd)
        os.close(self._write_fd)
        self.fd = self._write_fd = None
