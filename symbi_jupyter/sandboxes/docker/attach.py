"""A container's attach stream: Docker's multiplexed frames, and a run's output read
from it until the container closes it or the run must be stopped."""

from __future__ import annotations

import selectors
import socket
import struct
import time

from .._sigint import SigintLatch
from .._streams import CappedStream
from ..base import ExecutionRequest
from ..supervisor.cgroups import RunCgroup

#: Docker's stream numbers in a frame's header.
STDOUT, STDERR = 1, 2


class Frames:
    """Splits Docker's multiplexed attach stream (8-byte headers) into frames."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self.buf += chunk
        out = []
        while len(self.buf) >= 8:
            kind, size = self.buf[0], struct.unpack(">I", self.buf[4:8])[0]
            if len(self.buf) < 8 + size:
                break
            out.append((kind, self.buf[8 : 8 + size]))
            self.buf = self.buf[8 + size :]
        return out


def follow_run(
    raw: socket.socket,
    streams: dict[int, CappedStream],
    request: ExecutionRequest,
    group: RunCgroup | None,
    deadline: float | None,
    latch: SigintLatch,
) -> tuple[bool, bool, bool]:
    """Reads the run's output from ``raw`` into ``streams`` (what each keeps goes to
    ``request.on_output``) until the container closes its end, the deadline passes,
    the cgroup has used the CPU limit or the stop button is pressed. Returns
    (timed_out, cpu_exceeded, interrupted); the caller kills the container."""
    lim = request.limits
    timed_out = cpu_exceeded = interrupted = False
    frames = Frames()
    sel = selectors.DefaultSelector()
    sel.register(raw, selectors.EVENT_READ)
    if latch.fd is not None:
        sel.register(latch.fd, selectors.EVENT_READ)
    try:
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            if group and lim.max_cpu_seconds:
                used = group.cpu_usage_seconds()
                if used is not None and used >= lim.max_cpu_seconds:
                    cpu_exceeded = True
                    break
            wait = 0.1 if group and lim.max_cpu_seconds else 1.0
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            try:
                ready = sel.select(wait)
            except KeyboardInterrupt:
                interrupted = True
                break
            if not ready:
                continue
            if any(key.fd == latch.fd for key, _ in ready):
                interrupted = True
                break
            chunk = raw.recv(1 << 16)
            if not chunk:
                break
            for kind, data in frames.feed(chunk):
                stream = streams.get(kind)
                if stream is None:
                    continue
                kept = stream.feed(data)
                if kept and request.on_output:
                    request.on_output(stream.name, kept)
    finally:
        sel.close()
    return timed_out, cpu_exceeded, interrupted
