"""A kernel's worker in a long-lived container (a kernel session): its attach stream
is the channel, read on a thread of its own until the container ends."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from ...result import ExecutionResult
from .._streams import CappedStream
from ..base import ExecutionRequest, WorkerHandle
from .attach import STDERR, STDOUT, Frames
from .prepared import Prepared
from .results import container_result

if TYPE_CHECKING:
    from .sandbox import DockerSandbox


class ContainerWorker(WorkerHandle):
    """A kernel's worker in a long-lived container: its attach stream is the channel."""

    def __init__(
        self,
        sandbox: DockerSandbox,
        prepared: Prepared,
        request: ExecutionRequest,
        enforcement: dict[str, str],
    ) -> None:
        self._sandbox = sandbox
        self._prepared = prepared
        self._request = request
        self._enforcement = enforcement
        self._send_lock = threading.Lock()
        self._started = time.monotonic()
        self._killed = False
        self.result: ExecutionResult | None = None
        self._reader = threading.Thread(
            target=self._read, name="symbi-container-worker", daemon=True
        )
        self._reader.start()

    @property
    def enforcement(self) -> dict[str, str]:
        return dict(self._enforcement)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._prepared.raw.sendall(data)

    def _read(self) -> None:
        raw, frames = self._prepared.raw, Frames()
        names = {STDOUT: "stdout", STDERR: "stderr"}
        try:
            while chunk := raw.recv(1 << 16):
                for kind, data in frames.feed(chunk):
                    if kind in names and self._request.on_output:
                        self._request.on_output(names[kind], data)
        except OSError:
            pass
        self._finish()

    def _finish(self) -> None:
        """The container ended (or was killed): read its figures, then remove it."""
        container, parent = self._prepared.container, self._prepared.parent
        status: dict[str, Any] = {"StatusCode": -1}
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            status = container.wait(timeout=30)
            container.reload()
            state = container.attrs.get("State", {})
        streams = {
            k: CappedStream(n, math.inf, keep=False)
            for k, n in ((STDOUT, "stdout"), (STDERR, "stderr"))
        }
        self.result = container_result(
            self._sandbox,
            self._request,
            streams,
            status,
            state,
            dict(self._enforcement),
            parent,
            container.id,
            time.monotonic() - self._started,
            False,
            False,
            0,
        )
        self._sandbox._pool.later(self._prepared.discard)

    def stop(self) -> None:
        if self.result is None and not self._killed:
            self._killed = True
            with contextlib.suppress(Exception):
                self._prepared.container.kill()
        self._reader.join(timeout=60)

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        self._reader.join(timeout)
        return self.result

    def usage(self) -> dict[str, Any]:
        group = self._prepared.group
        if not group or self.result is not None:
            return {}
        return group.usage()

    def reset_peak(self) -> bool:
        group = self._prepared.group
        if not group:
            return False
        return group.reset_peak()
