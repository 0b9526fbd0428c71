"""The container tiers' reaper: a small process that outlives a host killed outright
and removes that host's containers, running or pooled, at once.

Started by the host with ``python -I -S -B -c BOOTSTRAP PACKAGE_DIR reaper SOCKET
LABEL``, in a session of its own, reading a pipe from the host; it leaves the host's
process tree at once (forks, and the parent exits), since a host that ends may take its
children with it (a Ray worker kills its children as it exits, and a node agent is
one) before this process has removed anything. ``q`` on the pipe: the
host closed normally and removed its own containers; end quietly. End of file without
it: the host is gone; remove every container labelled ``LABEL`` through the engine's
unix socket ``SOCKET``. Runs cannot signal it: it runs as root, they as uids of their
own.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import sys
import time
import urllib.parse


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def _request(path: str, method: str, url: str) -> bytes:
    conn = _UnixConnection(path)
    try:
        conn.request(method, url)
        return conn.getresponse().read()
    finally:
        conn.close()


def remove_labelled(engine_socket: str, label: str) -> list[str]:
    """Force-remove every container carrying ``label`` (``key=value``); their ids."""
    filters = urllib.parse.quote(json.dumps({"label": [label]}))
    listed = json.loads(_request(engine_socket, "GET", f"/containers/json?all=1&filters={filters}"))
    removed = []
    for container in listed:
        _request(engine_socket, "DELETE", f"/containers/{container['Id']}?force=1&v=1")
        removed.append(container["Id"][:12])
    return removed


def main(argv: list[str]) -> None:
    engine_socket, label = argv[:2]
    if os.fork():
        os._exit(0)  # the host waits for this one; the child, init's now, reads on
    said = b""
    stdin = sys.stdin.buffer
    assert isinstance(stdin, io.BufferedReader)  # the pipe from the host
    while chunk := stdin.read1(64):
        said += chunk
    if said.endswith(b"q"):
        return
    # Twice: a container the host was creating as it died may appear after the first.
    for pause in (0.0, 1.0):
        time.sleep(pause)
        try:
            remove_labelled(engine_socket, label)
        except (OSError, ValueError, http.client.HTTPException):
            return  # no engine to ask: the next host's start reaps what is left
