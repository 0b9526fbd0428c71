"""A kernel's worker on the host: a run of the supervisor whose stdin is a pipe the
kernel writes cells to, served on a thread of the sandbox until it ends."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any

from ...errors import TierUnavailable
from ...result import ExecutionResult
from .._usage import run_usage
from ..base import WorkerHandle
from ..supervisor.cgroups import RunCgroup
from ..supervisor.proctree import write_all


class NativeWorker(WorkerHandle):
    """A kernel's worker on the host: a run of the supervisor with a stdin pipe."""

    def __init__(self, stdin_w: int) -> None:
        self._stdin = stdin_w
        self._send_lock = threading.Lock()
        self.ready = threading.Event()  # started, or failed before it could
        self.done = threading.Event()  # the run is over: result or error is set
        self.monitor_pid: int | None = None
        self.pid: int | None = None
        self.cgroup: dict[str, Any] | None = None
        self._enforcement: dict[str, str] = {}
        self.result: ExecutionResult | None = None
        self.error: BaseException | None = None

    def started(self, event: dict[str, Any]) -> None:
        self.monitor_pid, self.pid = event["monitor_pid"], event["pid"]
        self.cgroup = event.get("cgroup")
        self._enforcement = event.get("enforcement", {})
        self.ready.set()

    @property
    def enforcement(self) -> dict[str, str]:
        return dict(self._enforcement)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            write_all(self._stdin, data)

    def stop(self) -> None:
        if self.monitor_pid is not None and self.result is None and self.error is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.monitor_pid, signal.SIGUSR1)
        self.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._stdin)
        self._stdin = -1

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        if not self.done.wait(timeout):
            return None
        if self.error is not None:
            if isinstance(self.error, TierUnavailable):
                raise self.error
            raise TierUnavailable(f"the native worker failed: {self.error!r}")
        return self.result

    def usage(self) -> dict[str, Any]:
        return run_usage({"cgroup": self.cgroup, "pid": self.pid})

    def reset_peak(self) -> bool:
        # v2's memory.peak resets per open file only: False there.
        if not self.cgroup:
            return False
        return RunCgroup.from_report(self.cgroup).reset_peak()
