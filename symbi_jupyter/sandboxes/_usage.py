"""Reading a running sandbox's memory and CPU from outside it: from its cgroup where
it has one, else from /proc. Used between a kernel's cells and to sample a run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


def _number(path: Path | None) -> int | None:
    try:
        return int(path.read_text().split()[0]) if path else None
    except (OSError, ValueError, IndexError):
        return None


def cgroup_file(cgroup: dict[str, Any], ctrl: str, v1: str, v2: str) -> Path | None:
    """A file of the run cgroup ``cgroup`` ({"version", "paths"} as the supervisor
    reports it): the v1 controller's file, or the v2 group's."""
    paths = cgroup["paths"]
    if cgroup["version"] == 1:
        return Path(paths[ctrl], v1) if ctrl in paths and v1 else None
    return Path(paths[""], v2) if "" in paths and v2 else None


def cgroup_usage(cgroup: dict[str, Any]) -> dict[str, Any]:
    """memory_bytes, peak_memory_bytes and cpu_seconds of a run cgroup; {} if unreadable
    or if no process is left in it (the figures of an emptied group describe no run)."""
    if _number(cgroup_file(cgroup, "pids", "pids.current", "pids.current")) == 0:
        return {}
    current = _number(cgroup_file(cgroup, "memory", "memory.usage_in_bytes", "memory.current"))
    if current is None:
        return {}
    peak = _number(cgroup_file(cgroup, "memory", "memory.max_usage_in_bytes", "memory.peak"))
    cpu = None
    if cgroup["version"] == 1:
        ns = _number(cgroup_file(cgroup, "cpuacct", "cpuacct.usage", ""))
        cpu = ns / 1e9 if ns is not None else None
    else:
        stat = cgroup_file(cgroup, "", "", "cpu.stat")
        with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
            fields = dict(line.split() for line in stat.read_text().splitlines())
            cpu = int(fields["usage_usec"]) / 1e6
    return {"memory_bytes": current, "peak_memory_bytes": peak, "cpu_seconds": cpu,
            "method": "cgroup"}


def proc_usage(pid: int) -> dict[str, Any]:
    """One process's figures from /proc (its children's CPU only once reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return {}
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "memory_bytes": int(fields["VmRSS"].split()[0]) * 1024,
        "peak_memory_bytes": int(fields["VmHWM"].split()[0]) * 1024,
        # utime, stime, cutime, cstime: fields 14-17, counted from 3 after the name
        "cpu_seconds": sum(int(v) for v in stat[11:15]) / tick,
        "method": "proc",
    }


def run_usage(started: dict[str, Any]) -> dict[str, Any]:
    """A native run's figures from its "started" event: its cgroup, else its main
    process."""
    if started.get("cgroup"):
        figures = cgroup_usage(started["cgroup"])
        if figures:
            return figures
    return proc_usage(started["pid"]) if started.get("pid") else {}
