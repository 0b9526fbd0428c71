"""The supervisor's main loop: keep spare monitors forked, each waiting for a request.

Protocol: after the supervisor's ``ready`` the host sends ``{"profile": ...}``, what
the first spares start an interpreter for; then one SOCK_SEQPACKET message per run, a
JSON request with four descriptors attached (stdout, stderr, status write ends, and a
file holding the code), and a fifth for a kernel's worker (its stdin). A monitor takes
it and writes JSON lines to the status pipe: ``{"event": "started", ...}`` then
``{"event": "exit", ...}`` (or one ``{"event": "error", ...}`` if the run could not
start).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
from typing import Any

from . import channel
from .cgroups import probe_cgroups, reap_stale
from .monitor import Monitor
from .proctree import PR_SET_CHILD_SUBREAPER, prctl


def serve(sock: socket.socket, host_pid: int, spares: int = 1) -> None:
    """Keep ``spares`` monitors forked in advance, each waiting on the socket, so a
    request costs no fork of the supervisor; replace each one that takes a request.
    Exit when the host closes its end.

    Spares tell this process on ``news`` (one message each): ``+`` replace me, ``q``
    the host is gone, ``p`` + JSON the profile later spares start an interpreter for,
    ``i`` + JSON the block of ids later spares lease their uid from.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the notebook is not for us
    probe = probe_cgroups()
    reaped = reap_stale(probe)
    sock.send(
        json.dumps(
            {"event": "ready", "pid": os.getpid(), "cgroup": probe, "reaped": reaped}
        ).encode()
    )
    # The host answers with what the first spares should start an interpreter for,
    # and where they lease their uid.
    hello = json.loads(sock.recv(1 << 20) or b"{}")
    profile, identities = hello.get("profile"), hello.get("identity")
    private_mounts = bool(hello.get("private_mounts"))
    # Frozen objects are never touched by the collector, so forked monitors share
    # their pages with us instead of copying them.
    gc.freeze()
    news, spares_news = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for _ in range(spares):
        _fork_spare(sock, news, spares_news, probe, host_pid, profile, identities, private_mounts)
    while True:
        try:
            message = news.recv(1 << 20)
        except InterruptedError:
            continue
        if not message or message == b"q":
            return  # a spare saw EOF: the host is gone or done with us
        if message[:1] == b"p":
            profile = json.loads(message[1:])
        elif message[:1] == b"i":
            identities = json.loads(message[1:])
        else:
            _fork_spare(
                sock, news, spares_news, probe, host_pid, profile, identities, private_mounts
            )


def _fork_spare(
    sock: socket.socket,
    news: socket.socket,
    spares_news: socket.socket,
    probe: dict[str, Any],
    host_pid: int,
    profile: dict[str, Any] | None,
    identities: dict[str, Any] | None,
    private_mounts: bool,
) -> None:
    if os.fork() != 0:
        return
    try:
        gc.disable()
        news.close()
        # A kernel's shutdown may SIGTERM its process tree: a spare then removes what
        # it prepared instead of dying with it. Held back while it prepares, so it is
        # never caught with half of it made.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        spare = Monitor(
            probe,
            host_pid,
            (sock.fileno(), spares_news.fileno()),
            profile,
            identities,
            private_mounts,
        )
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            request = channel.receive(sock)
        except SystemExit:
            request = None
        if request is None:
            spare.discard()
            spares_news.send(b"q")
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.close()
        spare.inherited = (spares_news.fileno(),)
        req, (out_fd, err_fd, status_fd, code_fd, *in_fd) = request
        refilled: list[bool] = []

        def refill() -> None:
            if not refilled:
                refilled.append(True)
                spares_news.send(b"+")

        try:
            spare.run(
                req,
                out_fd,
                err_fd,
                status_fd,
                code_fd,
                on_started=refill,
                in_fd=in_fd[0] if in_fd else None,
                on_profile=lambda p: spares_news.send(b"p" + json.dumps(p).encode()),
                on_identities=lambda i: spares_news.send(b"i" + json.dumps(i).encode()),
            )
        finally:
            refill()  # even if this run failed early, the next request needs a spare
    finally:
        os._exit(0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """``FD HOST_PID SPARES``: serve the host on the socket ``FD``."""
    fd, host_pid, spares = (argv if argv is not None else sys.argv[1:])[:3]
    # Orphans of a monitor killed from outside come here rather than to init.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    serve(socket.socket(fileno=int(fd)), int(host_pid), int(spares))


if __name__ == "__main__":
    main()
