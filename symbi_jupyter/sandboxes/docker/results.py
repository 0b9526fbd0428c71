"""What an ended container makes as an ExecutionResult: its exit status and state
from the engine, its peak memory and CPU from its cgroup parent, which limit (if
any) stopped it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...result import ExecutionResult
from .._evidence import Evidence, assemble
from .._streams import CappedStream
from ..base import ExecutionRequest
from ..supervisor.cgroups import RunCgroup
from .attach import STDERR, STDOUT
from .options import MiB

if TYPE_CHECKING:
    from .sandbox import DockerSandbox


def container_result(
    sandbox: DockerSandbox,
    request: ExecutionRequest,
    streams: dict[int, CappedStream],
    status: dict[str, Any],
    state: dict[str, Any],
    enforcement: dict[str, str],
    parent: str | None,
    container_id: str,
    wall: float,
    timed_out: bool,
    cpu_exceeded: bool,
    pids_hits: int,
) -> ExecutionResult:
    """The result of a run (or a kernel's worker) in ``sandbox``'s container, whose
    cgroup parent is ``parent``; ``enforcement`` gets the note on how it was measured.
    Figures are read only from a parent that held this container alone."""
    out, err = streams[STDOUT], streams[STDERR]
    code = int(status.get("StatusCode", -1))
    # docker-init exits 128+N when its child died of signal N.
    term_signal = code - 128 if 128 < code < 160 and not timed_out else None
    if timed_out or cpu_exceeded:
        term_signal = 9
    peak = cpu_user = cpu_sys = None
    method = None
    group = RunCgroup.v1_parent(parent) if parent else None
    if group and group.subgroups() - {container_id}:
        group = None
        enforcement["measurement"] = (
            "peak memory and CPU unavailable: the container's cgroup parent held "
            "another group too, whose figures would have been counted"
        )
    elif group:
        peak = group.peak_memory()
        cpu_user, cpu_sys = group.cpu_user_system()
        method = "cgroup" if peak else None
        if sandbox.runtime == "runsc":
            enforcement["measurement"] = (
                "the sandbox's cgroup: figures include gVisor's own kernel (the Sentry)"
            )
    elif not parent:
        enforcement["measurement"] = (
            "peak memory and CPU not measured: the engine is remote or not on cgroup v1 "
            "with the cgroupfs driver"
        )
    stderr_text = err.text()
    evidence = Evidence(
        exit_code=code,
        term_signal=term_signal,
        timed_out=timed_out,
        cpu_exceeded=cpu_exceeded,
        # The engine's flag misses a process gVisor's own kernel killed when the
        # sandbox's cgroup ran out: the cgroup's own count does not.
        oom_kills=1 if state.get("OOMKilled") else group.oom_kills() if group else 0,
        memory_limit_reached=bool(
            peak
            and request.limits.max_memory_mb
            and peak >= int(request.limits.max_memory_mb * MiB)
        ),
        pids_limit_hits=pids_hits,
        cpu_seconds=(cpu_user or 0) + (cpu_sys or 0),
        stderr=stderr_text,
        output_truncated=out.truncated or err.truncated,
    )
    return assemble(
        sandbox.tier,
        request,
        evidence,
        out,
        err,
        exit_code=-1 if term_signal else code,
        wall_seconds=wall,
        enforcement=enforcement,
        peak_memory_bytes=peak,
        memory_method=method,
        cpu_user_seconds=cpu_user,
        cpu_system_seconds=cpu_sys,
        executable=f"{sandbox.image}:{request.policy.interpreter}",
    )
