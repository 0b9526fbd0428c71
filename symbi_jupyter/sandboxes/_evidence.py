"""Which limit stopped a run, decided from evidence, the same way for every backend:
the backend's own decisions (timeout, CPU, output), the terminating signal, cgroup or
engine events (OOM kills, pids-limit hits), and the interpreter's last words."""

from __future__ import annotations

import dataclasses
import math
import re
import signal
from typing import TYPE_CHECKING, Any

from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from ._streams import CappedStream
    from .base import ExecutionRequest

# Final stderr lines that are evidence of a limit, per killed_by reason.
_LAST_WORDS = {
    "memory": re.compile(
        r"^(MemoryError\b|.*Cannot allocate memory|.*xmalloc: cannot allocate|"
        r".*JavaScript heap out of memory)",
        re.M,
    ),
    "file_size": re.compile(r"(\[Errno 27\] File too large|File size limit exceeded)"),
    "disk": re.compile(r"No space left on device"),
    "processes": re.compile(
        r"(\[Errno 11\] Resource temporarily unavailable|fork: retry|Cannot fork|"
        r"fork: Resource temporarily unavailable)"
    ),
}


@dataclasses.dataclass
class Evidence:
    exit_code: int | None = None
    term_signal: int | None = None
    timed_out: bool = False
    cpu_exceeded: bool = False
    stopped_for_output: bool = False
    oom_kills: int = 0
    #: the run's memory reached its limit (a cgroup's peak), where the OOM kill that
    #: followed left no count behind (gVisor's own kernel kills inside the sandbox)
    memory_limit_reached: bool = False
    pids_limit_hits: int = 0
    #: the run's writable space (its tmpfs) was full when it ended, as the host saw;
    #: None where the host cannot see it (the run's own words decide then)
    disk_full: bool | None = None
    cpu_seconds: float = 0.0
    stderr: str = ""
    output_truncated: bool = False


def killed_by(ev: Evidence, limits: ResourceLimits) -> str | None:
    if ev.timed_out:
        return "timeout"
    if ev.cpu_exceeded:
        return "cpu"
    if ev.stopped_for_output:
        return "output"
    if ev.term_signal == signal.SIGXCPU:
        return "cpu"
    if ev.term_signal == signal.SIGXFSZ:
        return "file_size"
    if ev.term_signal == signal.SIGKILL and (ev.oom_kills or ev.memory_limit_reached):
        return "memory"
    if ev.term_signal == signal.SIGKILL and limits.max_cpu_seconds:
        if ev.cpu_seconds >= math.ceil(limits.max_cpu_seconds):
            return "cpu"  # the RLIMIT_CPU hard limit is a SIGKILL
    if ev.term_signal is not None:
        return "signal"
    if ev.exit_code:
        tail = "\n".join(ev.stderr.rstrip().splitlines()[-3:])
        if _LAST_WORDS["memory"].search(tail) or ev.oom_kills:
            return "memory"
        if _LAST_WORDS["file_size"].search(tail):
            return "file_size"
        if _LAST_WORDS["disk"].search(tail) and (
            ev.disk_full if ev.disk_full is not None else bool(limits.max_disk_mb)
        ):
            return "disk"
        if _LAST_WORDS["processes"].search(tail) and (ev.pids_limit_hits or limits.max_processes):
            return "processes"
    return None


def limits_reached(ev: Evidence, stopped_by: str | None) -> list[str]:
    """Every limit the run ran into, including those that did not stop it."""
    reached: list[str] = []
    if ev.oom_kills or ev.memory_limit_reached:
        reached.append("memory")
    if ev.pids_limit_hits:
        reached.append("processes")
    if ev.disk_full:
        reached.append("disk")
    if ev.output_truncated:
        reached.append("output")
    if stopped_by and stopped_by not in reached and stopped_by != "signal":
        reached.append(stopped_by)
    return reached


def assemble(
    tier: SecurityTier,
    request: ExecutionRequest,
    ev: Evidence,
    out: CappedStream,
    err: CappedStream,
    *,
    exit_code: int,
    wall_seconds: float,
    enforcement: dict[str, str],
    stopped_by: str | None = None,
    **measured: Any,
) -> ExecutionResult:
    """The result every backend reports, from its evidence (``ev.stderr`` is what
    ``err`` kept) and streams: which limit stopped the run (``stopped_by`` where the
    backend decided it, else :func:`killed_by`) and which it reached. ``measured``:
    what only the backend knows (memory and CPU figures, executable, start-up), or
    overrides."""
    stopped = stopped_by if stopped_by is not None else killed_by(ev, request.limits)
    fields: dict[str, Any] = dict(
        tier=tier,
        stdout=out.text(),
        stderr=ev.stderr,
        exit_code=exit_code,
        execution_time_ms=round(wall_seconds * 1000),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        timed_out=ev.timed_out,
        killed_by=stopped,
        term_signal=ev.term_signal,
        wall_seconds=wall_seconds,
        limits=request.limits,
        enforcement=enforcement,
        limits_reached=limits_reached(ev, stopped),
        language=request.language,
        code_sha256=request.code_sha256,
        stdout_bytes=out.total,
        stderr_bytes=err.total,
    )
    return ExecutionResult(**{**fields, **measured})
