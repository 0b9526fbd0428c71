"""The cells the bench runs, made on the host: a trivial cell, an idle one, the
throughput suite (:mod:`.suite`) and the isolation experiments (:mod:`.probe`), each
shipped as source, and their answers read back from the cell's output."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import probe, suite

#: The start-up cell: nothing to do, so the figure is the path to and from the code.
TRIVIAL = "pass"
#: The memory cell: a sandbox that only waits, so its peak is the sandbox's own cost.
IDLE = "import time\ntime.sleep(0.2)"

#: Each workload's count at scale 1 (about 5-30 ms at tier None on a 2-core machine).
BASE_COUNTS = {
    "cpu": 300_000,
    "syscalls": 10_000,
    "file_io": 20,
    "processes": 20,
    "memory": 10,
}
#: How each workload reads in the tables.
WORKLOAD_WORDS = {
    "cpu": "pure-Python CPU",
    "syscalls": "system calls",
    "file_io": "file I/O",
    "processes": "processes",
    "memory": "memory copy",
}
#: The isolation experiments, and how each reads.
QUESTIONS = {
    "host_name": "host name",
    "processes": "processes",
    "host_file": "host file",
    "kernel": "kernel",
    "network": "network",
    "user": "user",
}


def _shipped(module: Any, call: str) -> str:
    source = Path(module.__file__).read_text("utf-8")
    return f"{source}\n\nmain({call})\n"


def counts(scale: float) -> dict[str, int]:
    """The suite's counts at ``scale`` (at least one of each)."""
    return {name: max(1, round(count * scale)) for name, count in BASE_COUNTS.items()}


def suite_code(scale: float) -> str:
    """The throughput suite at ``scale``, as one cell."""
    return _shipped(suite, repr(counts(scale)))


def _marked(stdout: str, marker: str) -> Any:
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker):
            return json.loads(line[len(marker) :])
    return None


def suite_seconds(stdout: str) -> dict[str, float] | None:
    """The seconds each workload took, from the suite's output (None if it has none)."""
    found = _marked(stdout, suite.MARKER)
    if not isinstance(found, dict) or set(found) != set(BASE_COUNTS):
        return None
    if not all(isinstance(v, int | float) and v > 0 for v in found.values()):
        return None
    return {name: float(found[name]) for name in BASE_COUNTS}


def isolation_code(host: dict[str, Any]) -> str:
    """The isolation experiments as one cell, with what the host sees (no secret: the
    host file's text is made for this run only)."""
    return _shipped(probe, repr(host))


def isolation_answers(stdout: str) -> dict[str, bool] | None:
    """Each question -> whether the sandbox kept it from the code (None if unanswered)."""
    found = _marked(stdout, probe.MARKER)
    isolated = found.get("isolated") if isinstance(found, dict) else None
    if not isinstance(isolated, dict) or set(isolated) != set(QUESTIONS):
        return None
    if not all(isinstance(v, bool) for v in isolated.values()):
        return None
    return {name: isolated[name] for name in QUESTIONS}


def kernel_words(stdout: str) -> str | None:
    """Which kernel answered the isolation experiments: the host's, gVisor's, its own."""
    found = _marked(stdout, probe.MARKER)
    words = found.get("kernel") if isinstance(found, dict) else None
    return words if isinstance(words, str) else None


@contextlib.contextmanager
def host_side() -> Iterator[dict[str, Any]]:
    """What the isolation experiments compare with, as notebook 01 sets it up: this
    host's name, this process and its start time, a file in /tmp readable by every user
    with new text, this host's kernel, a port listening on every address, and this uid.
    The file and the listener go when the block ends."""
    token = secrets.token_hex(16)
    fd, path = tempfile.mkstemp(prefix="symbi-bench-host-file-", dir="/tmp")
    listener = socket.create_server(("0.0.0.0", 0))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token)
        os.chmod(path, 0o644)
        with open("/proc/version") as f:
            kernel = f.read().strip()
        yield {
            "host_name": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": probe.start_time(os.getpid()),
            "file": path,
            "file_text": token,
            "kernel": kernel,
            "address": _host_address(),
            "port": listener.getsockname()[1],
            "uid": os.getuid(),
        }
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.remove(path)


def _host_address() -> str:
    """This host's address on its default route (127.0.0.1 without one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.connect(("192.0.2.1", 9))  # chooses a route, sends nothing
            return str(udp.getsockname()[0])
        except OSError:
            return "127.0.0.1"
