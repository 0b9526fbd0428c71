"""The throughput suite, as it runs inside a sandbox: stdlib only, shipped as source
by :func:`symbi_jupyter.bench.workloads.suite_code` (the host imports it only for its
marker).

Each workload does a fixed amount of work, timed by the sandbox's own monotonic clock,
so the sandbox's start-up is not in the figure. They tax what
sandboxes tax differently: the interpreter alone (CPU), system calls, a file written,
fsynced and read back in the run's directory, processes spawned and reaped, and a
large buffer copied (memory bandwidth).
"""

from __future__ import annotations

import json
import os
import time

MARKER = "symbi-bench-suite:"
CHUNK = b"\x5a" * (64 * 1024)


def cpu(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def syscalls(n: int) -> None:
    for _ in range(n):
        os.stat(".")
        os.getpid()


def file_io(n: int) -> None:
    path = "symbi-bench.tmp"
    try:
        for _ in range(n):
            with open(path, "wb") as f:
                for _ in range(16):  # 1 MiB
                    f.write(CHUNK)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
    finally:
        os.remove(path)


def processes(n: int) -> None:
    for _ in range(n):
        pid = os.posix_spawnp("true", ["true"], dict(os.environ))
        os.waitpid(pid, 0)


def memory(n: int) -> None:
    source, target = _BUFFERS
    for _ in range(n):
        target[:] = source


WORKLOADS = {
    "cpu": cpu,
    "syscalls": syscalls,
    "file_io": file_io,
    "processes": processes,
    "memory": memory,
}
#: Each workload is timed this many times, interleaved, and its fastest time kept:
#: what else runs on the host can only add time, never take it away.
REPEATS = 3
_BUFFERS: list[bytearray] = []


def main(counts: dict[str, int]) -> None:
    """Time each workload ``counts[name]`` times over; print the fastest of
    :data:`REPEATS` tries of each, in seconds."""
    # The copy's buffers are made (and their pages touched) before any clock runs.
    _BUFFERS[:] = [bytearray(b"\x01") * (16 * 1024 * 1024), bytearray(16 * 1024 * 1024)]
    fastest: dict[str, float] = {}
    for _ in range(REPEATS):
        for name, count in counts.items():
            start = time.perf_counter()
            WORKLOADS[name](count)
            seconds = time.perf_counter() - start
            fastest[name] = min(seconds, fastest.get(name, seconds))
    print(MARKER + json.dumps(fastest), flush=True)
