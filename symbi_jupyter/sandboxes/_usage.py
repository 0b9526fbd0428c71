"""Reading a running native sandbox's memory and CPU from outside it: from its cgroup
where it has one, else from /proc. Used between a kernel's cells and to sample a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .supervisor.cgroups import RunCgroup


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
        figures = RunCgroup.from_report(started["cgroup"]).usage()
        if figures:
            return figures
    return proc_usage(started["pid"]) if started.get("pid") else {}
