"""The framed messages between the host, the supervisor, its monitors and their
waiting workloads: one SOCK_SEQPACKET message per request, with descriptors attached
(SCM_RIGHTS); status events as JSON lines on a pipe."""

from __future__ import annotations

import array
import json
import os
import socket
from typing import Any

_INT_SIZE = array.array("i").itemsize


def send(sock: socket.socket, message: bytes, fds: list[int]) -> None:
    """One message with ``fds`` attached."""
    sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def receive(sock: socket.socket, nfds: int = 4) -> tuple[dict[str, Any], list[int]] | None:
    """One JSON request with its ``nfds`` descriptors, and optionally one more (a
    worker's stdin); None at EOF. A message with another count of descriptors is
    dropped, its descriptors closed."""
    while True:
        try:
            msg, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE((nfds + 1) * _INT_SIZE))
        except InterruptedError:
            continue
        if not msg:
            return None
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % _INT_SIZE]))
        if len(fds) in (nfds, nfds + 1):
            return json.loads(msg), fds
        for fd in fds:
            os.close(fd)


class StatusPipe:
    """The write end of a run's status pipe: one JSON line per event. A host that has
    gone away is not an error here (the monitor sees POLLERR and cleans up)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def emit(self, event: dict[str, Any]) -> None:
        try:
            os.write(self.fd, (json.dumps(event) + "\n").encode())
        except OSError:
            pass
