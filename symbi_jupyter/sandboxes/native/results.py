"""What a native run's end makes: the monitor's exit report as an ExecutionResult
(which limit, if any, stopped it; its peak memory and CPU), and a kept run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...result import ExecutionResult
from ...tiers import SecurityTier
from .._evidence import Evidence, assemble
from .._streams import CappedStream
from ..base import ExecutionRequest


def native_result(
    request: ExecutionRequest,
    ev: dict[str, Any],
    streams: dict[int, CappedStream],
    enforcement: dict[str, str],
    stopped_for_output: bool,
) -> ExecutionResult:
    """The result of a run from its monitor's ``exit`` event ``ev`` and its two
    streams (stdout, then stderr)."""
    out, err = (s for s in streams.values())
    code = ev.get("exit_code")
    term_signal = -code if code is not None and code < 0 else None
    stderr_text = err.text()
    evidence = Evidence(
        exit_code=code,
        term_signal=term_signal,
        timed_out=bool(ev.get("timed_out")),
        cpu_exceeded=bool(ev.get("cpu_exceeded")),
        stopped_for_output=stopped_for_output,
        oom_kills=ev.get("oom_kills") or 0,
        pids_limit_hits=ev.get("pids_limit_hits") or 0,
        disk_full=ev.get("disk_full"),
        cpu_seconds=(ev.get("cpu_user_seconds") or 0) + (ev.get("cpu_system_seconds") or 0),
        stderr=stderr_text,
        output_truncated=out.truncated or err.truncated,
    )
    peak = ev.get("peak_memory_bytes")
    method = "cgroup" if peak else None
    if not peak:
        peak, method = ev.get("maxrss_bytes") or None, "wait4"
    return assemble(
        SecurityTier.NONE,
        request,
        evidence,
        out,
        err,
        exit_code=code if code is not None and code >= 0 else -1,
        wall_seconds=float(ev.get("wall_seconds") or 0.0),
        enforcement=enforcement,
        peak_memory_bytes=peak,
        memory_method=method if peak else None,
        cpu_user_seconds=ev.get("cpu_user_seconds"),
        cpu_system_seconds=ev.get("cpu_system_seconds"),
    )


def keep_run_dir(cwd: str) -> str:
    """The run directory ``cwd``, kept at the request's wish, renamed ``kept-...`` and
    (as root) given to root; returns its new path."""
    run_dir = Path(cwd)
    kept = run_dir.with_name("kept-" + run_dir.name[len("run-") :])
    run_dir.rename(kept)
    if os.geteuid() == 0:
        _give_to_root(kept)
    return str(kept)


def _give_to_root(path: Path) -> None:
    """A kept run directory and all in it to root: the run's uid is free for another
    run, which must find nothing of this one's. Never follows a link the run made."""
    for _, dirs, files, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
    os.chown(path, 0, 0, follow_symlinks=False)
