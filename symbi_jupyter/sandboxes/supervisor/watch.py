"""A started run, watched to its end: the wall clock, the CPU limit, a cancel and the
host's going away end the watch; then the whole tree is stopped and the ``exit``
event says how the run ended and what it used."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import select
import signal
import time
from collections.abc import Callable
from typing import Any

from . import mounts
from .cgroups import RunCgroup
from .proctree import kill_tree

#: Free space on the run's tmpfs below which it counts as full (a few pages).
DISK_FULL_BYTES = 16 << 10


@dataclasses.dataclass
class Watch:
    """How the watch of a run ended."""

    started: float
    status: int | None = None
    rusage: Any = None
    timed_out: bool = False
    cancelled: bool = False
    host_gone: bool = False
    cpu_exceeded: bool = False
    wall: float = 0.0


def watch_run(
    pid: int,
    req: dict[str, Any],
    cgroup: RunCgroup | None,
    applied: dict[str, str],
    started: float,
    status_fd: int,
    wake_r: int,
    cancelled: Callable[[], bool],
) -> Watch:
    """Wait for the workload to end, the wall clock or CPU limit to pass, a cancel
    (``cancelled()`` turns true; the signal that sets it wakes ``wake_r``), or the
    host to go away."""
    watch = Watch(started)
    timeout = req.get("timeout")
    deadline = started + timeout if timeout else None
    cpu_limit = req.get("cpu_seconds_total") if "cpu" in applied else None
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    # POLLERR on the write end of the status pipe: the host has gone away.
    poller.register(status_fd, 0)
    while True:
        done, st, ru = os.wait4(pid, os.WNOHANG)
        if done:
            watch.status, watch.rusage = st, ru
            break
        now = time.monotonic()
        if cancelled():
            watch.cancelled = True
            break
        if deadline is not None and now >= deadline:
            watch.timed_out = True
            break
        if cpu_limit and cgroup is not None:
            used = cgroup.cpu_usage_seconds()
            if used is not None and used >= cpu_limit:
                watch.cpu_exceeded = True
                break
        wait = 0.1 if cpu_limit else 1.0
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        for fd, ev in poller.poll(int(wait * 1000) + 1):
            if fd == status_fd and ev & (select.POLLERR | select.POLLHUP):
                watch.host_gone = True
            elif fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
        if watch.host_gone:
            break
    watch.wall = time.monotonic() - started
    return watch


def stop_run(pid: int, req: dict[str, Any], cgroup: RunCgroup | None, watch: Watch) -> int:
    """End the whole tree (after SIGINT and a grace period when cancelled);
    returns how many stragglers were killed."""
    if watch.cancelled:
        # Like Ctrl-C in a terminal first, so the code can show where it was.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGINT)
        grace = time.monotonic() + float(req.get("interrupt_grace", 1.0))
        while time.monotonic() < grace:
            done, st, ru = os.wait4(pid, os.WNOHANG)
            if done:
                watch.status, watch.rusage = st, ru
                break
            time.sleep(0.01)
    reaped: dict[int, tuple] = {}
    stragglers = kill_tree(cgroup, reaped)
    if watch.status is None and pid in reaped:
        watch.status, watch.rusage = reaped[pid]
    return stragglers


def exit_report(
    watch: Watch, cgroup: RunCgroup | None, stragglers: int, staging: bool
) -> dict[str, Any]:
    """The ``exit`` event: how the run ended and what it used (the whole tree's CPU
    and memory, its cgroup's figures, its tmpfs's use where ``staging``)."""
    tree = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = watch.status
    result: dict[str, Any] = {
        "event": "exit",
        "wait_status": status,
        "exit_code": os.waitstatus_to_exitcode(status) if status is not None else None,
        "timed_out": watch.timed_out,
        "cancelled": watch.cancelled,
        "cpu_exceeded": watch.cpu_exceeded,
        "wall_seconds": watch.wall,
        "cpu_user_seconds": tree.ru_utime,
        "cpu_system_seconds": tree.ru_stime,
        "maxrss_bytes": tree.ru_maxrss * 1024,
        "main_maxrss_bytes": watch.rusage.ru_maxrss * 1024 if watch.rusage else None,
        "stragglers_killed": stragglers,
        "cgroup_version": cgroup.version if cgroup else None,
    }
    disk = mounts.usage() if staging else None
    if disk is not None:
        used, free = disk
        # Full to the last pages: a write failed, or would have.
        result.update(disk_used_bytes=used, disk_full=free < DISK_FULL_BYTES)
    if cgroup is not None:
        result["peak_memory_bytes"] = cgroup.peak_memory()
        result["oom_kills"] = cgroup.oom_kills()
        result["pids_limit_hits"] = cgroup.pids_limit_hits()
        result["cgroup_cpu_seconds"] = cgroup.cpu_usage_seconds()
    return result
