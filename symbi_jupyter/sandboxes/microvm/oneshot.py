"""A one-shot run (:meth:`MicroVMSandbox.run`): the cell its worker runs, the key of
the pooled VM that fits it, and its :class:`ExecutionResult`."""

from __future__ import annotations

from typing import Any

from ...result import ExecutionResult
from ...tiers import SecurityTier
from .._evidence import Evidence, assemble, killed_by
from .._streams import CappedStream
from ..base import ExecutionRequest
from ..supervisor.workload import code_arguments
from ..worker import CellOutcome
from .vm_worker import VMWorker, guest_oom


class OneShotOutput:
    """A one-shot run's streams: its worker's messages, kept up to the output cap and
    passed on as they come (an error's traceback on stderr, as a script shows it)."""

    def __init__(self, request: ExecutionRequest) -> None:
        cap = request.limits.max_output_bytes or 10 * 1024 * 1024
        self.request = request
        self.streams = {
            "stdout": CappedStream("stdout", cap),
            "stderr": CappedStream("stderr", cap),
        }

    def feed(self, name: str, text: str) -> None:
        kept = self.streams[name].feed(text.encode("utf-8", "surrogateescape"))
        if kept and self.request.on_output:
            self.request.on_output(name, kept)

    def on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "stream":
            self.feed(message.get("name", "stdout"), message.get("text", ""))
        elif message.get("type") == "error" and message.get("ename") != "SystemExit":
            self.feed("stderr", "\n".join(message.get("traceback", [])) + "\n")


def pool_key(request: ExecutionRequest) -> tuple:
    """What a pooled VM was booted with: its size and the rlimits on its command line
    (the environment and the code travel with the cell)."""
    lim = request.limits
    return (
        lim.max_memory_mb,
        lim.max_cpu_cores,
        lim.max_processes,
        lim.max_file_size_mb,
        lim.max_open_files,
        lim.max_cpu_seconds,
        lim.max_disk_mb,
    )


def cell_source(request: ExecutionRequest, interpreter: str, filename: str) -> str:
    """What the worker runs for a one-shot request: Python code as it is (the guest's
    own figures cover it; the worker names its frames ``filename``, as the other tiers
    do), any other language from a file, with its exit status: Python through the cell
    runner, as in a container."""
    text = request.code.decode("utf-8", "surrogateescape")
    env = dict(request.env)
    if interpreter.startswith("python") and not env:
        return text
    path = f"/workspace/{filename}"
    return (
        "import os, subprocess, sys\n"
        f"open({path!r}, 'wb').write({request.code!r})\n"
        f"env = dict(os.environ, **{env!r})\n"
        f"sys.exit(subprocess.call({[interpreter, *code_arguments(path)]!r}, "
        "env=env, cwd='/workspace'))\n"
    )


def run_result(
    tier: SecurityTier,
    request: ExecutionRequest,
    streams: dict[str, CappedStream],
    outcome: CellOutcome,
    startup: float | None,
    handle: VMWorker | None,
) -> ExecutionResult:
    """The result of ``request``'s one cell, from what its worker replied and what the
    host saw: the capped streams, and the console of the VM (``handle``), now gone."""
    reply, cell = outcome.reply, outcome.result
    out, err = streams["stdout"], streams["stderr"]
    if outcome.session_lost:
        code, term = -1, 9
    elif outcome.status == "ok":
        code, term = 0, None
    else:
        code, term = int(reply.get("exit_code", 1)), None
    console = handle.console_tail() if handle else ""
    # The guest's own word: its worker's and its commands' peak, kept apart as such.
    reported = dict(cell.sandbox_reported or {})
    children = reply.get("children_maxrss_bytes")
    if type(children) is int and children > reported.get("peak_memory_bytes", 0):
        reported["peak_memory_bytes"] = children
    evidence = Evidence(
        exit_code=code,
        term_signal=term,
        timed_out=cell.timed_out,
        cpu_exceeded=cell.killed_by == "cpu",
        stopped_for_output=False,
        oom_kills=1 if guest_oom(console) else 0,
        pids_limit_hits=0,
        cpu_seconds=cell.cpu_seconds or 0.0,
        stderr=err.text(),
        output_truncated=out.truncated or err.truncated,
    )
    stopped = (
        cell.killed_by
        if cell.killed_by in ("timeout", "cpu")
        else killed_by(evidence, request.limits)
    )
    return assemble(
        tier,
        request,
        evidence,
        out,
        err,
        exit_code=code,
        wall_seconds=cell.wall_seconds,
        enforcement={
            **(handle.enforcement if handle else {}),
            "timeout": "host (the VM is destroyed)",
            "cpu": "RLIMIT_CPU inside the guest",
            "output": "host (drained past the cap)",
        },
        stopped_by=stopped,
        timed_out=stopped == "timeout",
        peak_memory_bytes=cell.peak_memory_bytes,
        memory_method=cell.memory_method,
        cpu_user_seconds=cell.cpu_user_seconds,
        cpu_system_seconds=cell.cpu_system_seconds,
        sandbox_reported=reported or None,
        executable=f"guest:{request.policy.interpreter}",
        startup_seconds=startup,
        sandbox_detail=handle.label if handle else None,
    )
