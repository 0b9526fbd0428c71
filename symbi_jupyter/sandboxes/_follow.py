"""Following one native run from the host: its output, its monitor's status events,
the stop button, the output cap, and a backstop for a monitor that got stuck."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from ..errors import TierUnavailable
from ._sigint import SigintLatch
from ._streams import CappedStream
from ._usage import run_usage
from .base import ExecutionRequest

#: Seconds past the run's own timeout after which the host kills a silent monitor.
BACKSTOP_SECONDS = 30


class RunFollower:
    """Reads a run's stdout, stderr and status pipes until the monitor has reported and
    both streams are closed (the whole tree is dead)."""

    def __init__(
        self,
        request: ExecutionRequest,
        pipes: tuple[int, int, int],
        cap: float,
        keep: bool,
        latch: SigintLatch,
        stop_on_output_limit: bool,
        supervisor_died: Callable[[], bool],
    ) -> None:
        self.request = request
        self.out_r, self.err_r, self.status_r = pipes
        self.streams = {
            self.out_r: CappedStream("stdout", cap, keep=keep),
            self.err_r: CappedStream("stderr", cap, keep=keep),
        }
        self.latch = latch
        self.stop_on_output_limit = stop_on_output_limit
        self.supervisor_died = supervisor_died
        self.events: dict[str, dict[str, Any]] = {}
        self.monitor_pid: int | None = None
        self.interrupted = False
        self.stopped_for_output = False
        self._signalled = False
        self._status_buf = b""
        timeout = request.limits.timeout_seconds
        self._backstop = time.monotonic() + timeout + BACKSTOP_SECONDS if timeout else None

    def follow(self) -> None:
        """Follow the run to its end; closes the pipes."""
        sel = selectors.DefaultSelector()
        open_pipes = {self.out_r, self.err_r, self.status_r}
        for fd in open_pipes:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        if self.latch.fd is not None:
            sel.register(self.latch.fd, selectors.EVENT_READ)
        try:
            # Its monitor's own exit is not worth waiting for.
            while open_pipes and not ("exit" in self.events and open_pipes == {self.status_r}):
                try:
                    ready = sel.select(timeout=1.0)
                except KeyboardInterrupt:  # not SIGINT: the latch takes that
                    self.interrupted = True
                    ready = []
                for key, _ in ready:
                    if not self._read(key.fd):
                        sel.unregister(key.fd)
                        open_pipes.discard(key.fd)
                self._check()
        finally:
            sel.close()
            for fd in (self.out_r, self.err_r, self.status_r):
                os.close(fd)

    def _read(self, fd: int) -> bool:
        """Take what ``fd`` has; False once it is closed."""
        if fd == self.latch.fd:
            self.latch.drain()
            self.interrupted = True
            return True
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        if fd == self.status_r:
            self._status(chunk)
            return True
        stream = self.streams[fd]
        kept = stream.feed(chunk)
        if kept and self.request.on_output:
            self.request.on_output(stream.name, kept)
        if stream.truncated and self.stop_on_output_limit and not self.stopped_for_output:
            if self.monitor_pid:
                self.stopped_for_output = True
                self._signal_monitor(signal.SIGUSR1)
        return True

    def _status(self, chunk: bytes) -> None:
        self._status_buf += chunk
        while b"\n" in self._status_buf:
            line, self._status_buf = self._status_buf.split(b"\n", 1)
            event = json.loads(line)
            self.events[event["event"]] = event
            self.monitor_pid = self.monitor_pid or event.get("monitor_pid")
            if event["event"] == "started" and self.request.on_started:
                self.request.on_started({**event, "usage": functools.partial(run_usage, event)})

    def _check(self) -> None:
        """What is due after each wake-up: the stop button, a dead supervisor, the
        backstop."""
        if self.interrupted and self.monitor_pid and not self._signalled:
            # Also when the stop came before the monitor said who it is.
            self._signalled = True
            self._signal_monitor(signal.SIGUSR1)
        if self.monitor_pid is None and self.supervisor_died():
            raise TierUnavailable("the native supervisor process died before starting this run")
        if self._backstop and time.monotonic() > self._backstop and self.monitor_pid:
            # The monitor enforces the timeout; this only guards against a monitor
            # that itself got stuck.
            self._signal_monitor(signal.SIGKILL)
            self._backstop = None

    def _signal_monitor(self, sig: int) -> None:
        assert self.monitor_pid is not None  # the callers know it
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.monitor_pid, sig)
