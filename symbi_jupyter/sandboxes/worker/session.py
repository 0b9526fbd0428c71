"""The host side of a kernel session: one long-lived worker agent
(:mod:`symbi_jupyter.sandboxes.worker.agent`) inside a sandbox, spoken to in JSON lines.

Everything that must hold against hostile code is enforced out here, not by the
worker: the wall clock and CPU seconds of each cell and between cells, the output cap,
and the sandbox's own limits. The worker is code the user does not trust: its lines are
read with bounds (:mod:`.frames`), a message that breaks the protocol ends the worker,
and the figures of a cell are the host's own wherever the host can see them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import TierUnavailable
from ...limits import ResourceLimits
from ...result import ExecutionResult
from ...tiers import SecurityTier
from .._sigint import SigintLatch
from ..base import WorkerHandle
from .frames import MAX_DEPTH, MAX_MESSAGE_BYTES
from .intake import CellOutput, Intake, MessageCallback, content

#: How often a running cell's CPU time (and an idle worker's) is checked.
CPU_POLL_SECONDS = 0.25


class SessionLost(TierUnavailable):
    """The worker ended; its state is gone. ``reason`` says why in words."""


@dataclasses.dataclass
class CellOutcome:
    """How one cell ended: its reply, its figures, and whether the session survived."""

    status: str
    result: ExecutionResult
    reply: dict[str, Any]
    #: why the worker is gone after this cell (its state with it); None if it lives
    session_lost: str | None = None


class WorkerSession:
    """A persistent sandboxed namespace: cells run in order in one worker process.

    Made by :meth:`SandboxOrchestrator.open_session`, which applies policy; the
    session then enforces each cell's wall clock and CPU seconds from outside.
    """

    def __init__(
        self,
        handle_factory: Callable[[Callable[[str, bytes], None]], WorkerHandle],
        tier: SecurityTier,
        limits: ResourceLimits,
        *,
        interrupt_grace_seconds: float = 3.0,
        start_timeout_seconds: float = 120.0,
        audit: Callable[[dict[str, Any]], None] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_depth: int = MAX_DEPTH,
        idle_cpu_seconds: float | None = None,
    ) -> None:
        self.tier = tier
        self.limits = limits
        self.interrupt_grace_seconds = interrupt_grace_seconds
        #: CPU seconds the worker may use between two cells; None: the last cell's
        #: CPU limit (none if it had none)
        self.idle_cpu_seconds = idle_cpu_seconds
        self._intake = Intake(max_message_bytes, max_depth)
        self._messages = self._intake.messages
        self._idle: tuple[float, float | None] | None = None  # (CPU then, the budget)
        self._idle_lock = threading.Lock()
        self._stderr = b""
        self._ids = itertools.count(1)
        self._audit = audit or (lambda record: None)
        self.cells = 0
        self.totals = {"cpu_seconds": 0.0, "wall_seconds": 0.0, "peak_memory_bytes": 0}
        self.lost: str | None = None
        self._interrupt_sent = False  # this cell was asked to stop: only then "signal"
        self._cpu_visible = True
        started = time.monotonic()
        self.handle = handle_factory(self._on_output)
        try:
            ready = self._next(deadline=started + start_timeout_seconds)
            # A serial console may carry boot messages before the agent's first line.
            while ready is not None and ready.get("type") == "garbage":
                ready = self._next(deadline=started + start_timeout_seconds)
        except BaseException:
            self.handle.stop()
            raise
        if ready is None or ready.get("type") != "ready":
            self.handle.stop()
            raise TierUnavailable(
                f"the {tier.display_name} worker did not start: {self._diagnostics()}"
            )
        self.info = ready
        self.startup_seconds = time.monotonic() - started
        threading.Thread(target=self._watch_idle, name="symbi-idle-cpu", daemon=True).start()

    # ------------------------------------------------------------------ channel
    def _on_output(self, stream: str, chunk: bytes) -> None:
        """The handle's reader thread: frame, decode and check what the worker wrote.
        Total: whatever the worker sends, this returns, and a violation ends it."""
        if stream != "stdout":
            self._stderr = (self._stderr + chunk)[-16384:]
            return
        if self.lost is not None:
            return
        violation = self._intake.feed(chunk)
        if violation:
            self._violated(violation)

    def _violated(self, why: str) -> None:
        self._lose(f"the worker broke the protocol: {why}; it was stopped and its state is gone")
        self._messages.put({"type": "violation"})

    def _watch_idle(self) -> None:
        """Between cells, stop a worker whose CPU time passes the idle budget: a
        thread a cell left running must not compute on while no cell is metered."""
        while self.alive:
            time.sleep(CPU_POLL_SECONDS)
            with self._idle_lock:
                idle = self._idle
            if idle is None or idle[1] is None:
                continue
            used = _cpu(self.handle.usage()) - idle[0]
            with self._idle_lock:
                if self._idle is not idle or used <= idle[1]:
                    continue
                self._idle = None
            self._lose(
                f"the worker used {used:.2f} s of CPU while no cell ran, past the "
                f"{idle[1]:g} s allowed between cells; it was stopped and its state is gone"
            )
            self._audit(
                {
                    "tier": self.tier.value,
                    "event": "session-idle",
                    "outcome": "stopped",
                    "killed_by": "cpu",
                    "cpu_seconds": used,
                }
            )

    def _diagnostics(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return text[-2000:] or "no diagnostics on its stderr"

    def _next(
        self,
        deadline: float | None,
        poll: float = 0.1,
        sigint: threading.Event | None = None,
    ) -> dict[str, Any] | None:
        """The next message, or None when the worker ended, ``deadline`` passed or
        ``sigint`` was newly set."""
        seen = sigint is not None and sigint.is_set()
        while True:
            try:
                return self._messages.get(timeout=poll)
            except queue.Empty:
                pass
            if self.handle.wait(timeout=0) is not None and self._messages.empty():
                return None
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if sigint is not None and not seen and sigint.is_set():
                return None

    def _send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, ensure_ascii=True) + "\n").encode()
        try:
            self.handle.send(data)
        except OSError:
            self._lose("the worker is gone")

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        # Never on the handle's own reader thread, which stop() may wait for.
        threading.Thread(target=self.handle.stop, name="symbi-stop", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self.lost is None and self.handle.wait(timeout=0) is None

    # ------------------------------------------------------------------ requests
    def request(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a ``complete``, ``inspect``, ``is_complete`` or ``usage`` request and
        return the reply's content (``{"status": "error", ...}`` if none came)."""
        if not self.alive:
            return {"status": "error", "ename": "SessionLost", "evalue": self.lost or ""}
        ident = next(self._ids)
        self._intake.expect(ident, kind)
        self._send({"id": ident, "type": kind, **fields})
        deadline = time.monotonic() + timeout
        while (message := self._next(deadline)) is not None:
            if message.get("id") == ident and message.get("type") == "reply":
                return content(message)
        return {"status": "error", "ename": "Timeout", "evalue": f"no {kind} reply"}

    def interrupt(self) -> None:
        """Ask the worker to raise KeyboardInterrupt in the running cell."""
        self._interrupt_sent = True
        if self.alive:
            self._send({"type": "interrupt"})

    def execute(
        self,
        code: str,
        on_message: MessageCallback,
        *,
        limits: ResourceLimits | None = None,
        silent: bool = False,
        cell_name: str | None = None,
        source: str | None = None,
    ) -> CellOutcome:
        """Run one cell; its messages go to ``on_message`` as they come. The cell's
        ``timeout_seconds`` and ``max_cpu_seconds`` (from ``limits``, else the
        session's) are kept here: passing either stops the worker. ``source`` is the
        cell as typed where ``code`` is IPython's transformation of it: what its
        tracebacks show."""
        limits = limits or self.limits
        if not self.alive:
            raise SessionLost(self.lost or "the worker is gone")
        self.cells += 1
        ident = next(self._ids)
        with self._idle_lock:
            self._idle = None
        self._intake.expect(ident, "execute")
        peak_reset = self.handle.reset_peak()
        before = self.handle.usage()
        self._cpu_visible = "cpu_seconds" in before
        output = CellOutput(limits.max_output_bytes)
        self._interrupt_sent = False
        started = time.monotonic()
        deadline = started + limits.timeout_seconds if limits.timeout_seconds else None
        self._send(
            {
                "id": ident,
                "type": "execute",
                "code": code,
                "silent": silent,
                "max_output_bytes": limits.max_output_bytes,
                "cell_name": cell_name or f"<cell-{self.cells}>",
                # for %pip's reason: the sandbox's own network isolation is what holds
                "network": bool(limits.network),
                **({} if source is None else {"source": source}),
            }
        )
        reply: dict[str, Any] | None = None
        stopped: str | None = None
        interrupted_at: float | None = None
        next_cpu_check = started + CPU_POLL_SECONDS
        relay = output.relay(on_message)
        with SigintLatch() as latch:
            sigint = latch.event
            while reply is None and stopped is None:
                message = self._next(
                    deadline=min(filter(None, (deadline, next_cpu_check))), sigint=sigint
                )
                if sigint.is_set() and interrupted_at is None:
                    # SIGINT (the stop button): pass it on, and give the cell a grace
                    # period to stop by itself before the worker goes.
                    interrupted_at = time.monotonic()
                    self.interrupt()
                reply, stopped, next_cpu_check = self._step(
                    message,
                    ident,
                    relay,
                    limits,
                    before,
                    deadline,
                    interrupted_at,
                    next_cpu_check,
                )
        wall = time.monotonic() - started
        if stopped is not None:
            return self._stopped(stopped, limits, wall, before)
        assert reply is not None  # the loop ends with a reply or a stop
        after = self.handle.usage()
        with self._idle_lock:
            budget = self.idle_cpu_seconds
            self._idle = (_cpu(after), limits.max_cpu_seconds if budget is None else budget)
        return self._finished(reply, limits, wall, before, after, peak_reset, output)

    def _step(
        self,
        message: dict[str, Any] | None,
        ident: int,
        on_message: MessageCallback,
        limits: ResourceLimits,
        before: dict[str, Any],
        deadline: float | None,
        interrupted_at: float | None,
        next_cpu_check: float,
    ) -> tuple[dict[str, Any] | None, str | None, float]:
        """Handle one message or one tick of a running cell: (reply, why it was
        stopped, when to check its CPU time next)."""
        stopped = None
        if message is not None and message.get("type") == "violation":
            return None, "protocol", next_cpu_check
        if message is not None and message.get("id") == ident:
            if message.get("type") == "reply":
                return content(message), None, next_cpu_check
            on_message(message)
        # Checked after every message too: a cell that floods output still times out.
        now = time.monotonic()
        if message is None and self.handle.wait(timeout=0) is not None:
            stopped = "ended"
        elif deadline is not None and now >= deadline:
            stopped = "timeout"
        elif interrupted_at and now - interrupted_at > self.interrupt_grace_seconds:
            stopped = "signal"
        elif limits.max_cpu_seconds and now >= next_cpu_check:
            next_cpu_check = now + CPU_POLL_SECONDS
            used = _cpu(self.handle.usage()) - _cpu(before)
            if used >= limits.max_cpu_seconds:
                stopped = "cpu"
        return None, stopped, next_cpu_check

    def _finished(
        self,
        reply: dict[str, Any],
        limits: ResourceLimits,
        wall: float,
        before: dict[str, Any],
        after: dict[str, Any],
        peak_reset: bool,
        output: CellOutput,
    ) -> CellOutcome:
        """A cell that replied. Its figures are the host's (the sandbox's cgroup);
        what only the worker can tell is kept apart, as reported by the sandbox."""
        status = reply.get("status", "error")
        reported = {
            k: reply[k]
            for k in ("cpu_user_seconds", "cpu_system_seconds", "peak_memory_bytes")
            if isinstance(reply.get(k), int | float) and not isinstance(reply.get(k), bool)
        }
        cpu_user = cpu_system = peak = method = None
        if self._cpu_visible and "cpu_seconds" in after:
            cpu_user, cpu_system = max(0.0, _cpu(after) - _cpu(before)), 0.0
        elif "vmm_cpu_seconds" in before and "vmm_cpu_seconds" in after:
            # A VM's: the VMM's CPU, emulation included (the handle's enforcement says so).
            spent = after["vmm_cpu_seconds"] - before["vmm_cpu_seconds"]
            cpu_user, cpu_system = max(0.0, spent), 0.0
        if peak_reset and after.get("peak_memory_bytes"):
            # The sandbox's own high-water mark, reset before the cell: includes
            # every process the cell started.
            peak, method = after["peak_memory_bytes"], after.get("method")
        # The worker's own cap may have cut output before the host saw it.
        truncated = output.truncated | {
            name for name in ("stdout", "stderr") if reply.get(f"{name}_truncated") is True
        }
        result = self._result(
            limits,
            wall,
            exit_code=0 if status == "ok" else 1,
            cpu_user_seconds=cpu_user,
            cpu_system_seconds=cpu_system,
            peak_memory_bytes=peak,
            memory_method=method if peak else None,
            sandbox_reported=reported or None,
            stdout_truncated="stdout" in truncated,
            stderr_truncated="stderr" in truncated,
            stdout_bytes=output.counts["stdout"],
            stderr_bytes=output.counts["stderr"],
            # Stopped by the interrupt the host sent (the worker's word counts for no
            # other), and nothing was killed: the session and its state live on.
            interrupted="kept"
            if self._interrupt_sent and reply.get("interrupted") is True
            else None,
            limits_reached=["output"] if truncated else [],
        )
        outcome = "success" if status == "ok" else "failed"
        self._account(result, "interrupted" if result.interrupted else outcome)
        return CellOutcome(status, result, reply)

    def _stopped(
        self, why: str, limits: ResourceLimits, wall: float, before: dict[str, Any]
    ) -> CellOutcome:
        """The worker was stopped (by us) or died (by a limit): report the cell."""
        if why != "ended":
            self.handle.stop()
        ended = self.handle.wait(timeout=30)
        killed_by = {"timeout": "timeout", "cpu": "cpu", "signal": "signal"}.get(why)
        if why == "protocol":
            killed_by = "protocol"
        if killed_by is None and ended is not None:
            killed_by = ended.killed_by or ("signal" if ended.term_signal else None)
        # Only the entry that applies is formatted: the other limits may be unset.
        words = {
            "timeout": lambda: f"the cell passed its {limits.timeout_seconds:g} s wall-clock limit",
            "cpu": lambda: f"the cell passed its {limits.max_cpu_seconds:g} s CPU limit",
            "signal": lambda: "the cell did not stop when interrupted",
            "protocol": lambda: self.lost or "the worker broke the protocol",
            "memory": lambda: "the sandbox ran out of its memory limit",
            "processes": lambda: "the sandbox hit its process limit",
        }.get(killed_by or "", lambda: "the worker process ended")()
        self.lost = self.lost or f"{words}; the worker was stopped and its state is gone"
        cpu = None
        if ended is not None and ended.cpu_user_seconds is not None:
            cpu = (ended.cpu_user_seconds or 0) + (ended.cpu_system_seconds or 0)
        result = self._result(
            limits,
            wall,
            exit_code=-1,
            timed_out=killed_by == "timeout",
            killed_by=killed_by,
            term_signal=ended.term_signal if ended else None,
            cpu_user_seconds=ended.cpu_user_seconds if ended else None,
            cpu_system_seconds=ended.cpu_system_seconds if ended else None,
            peak_memory_bytes=ended.peak_memory_bytes if ended else None,
            memory_method=ended.memory_method if ended else None,
            limits_reached=[killed_by] if killed_by and killed_by != "signal" else [],
            # It ignored the interrupt past its grace period: the state went with it.
            interrupted="lost" if why == "signal" else None,
        )
        if cpu is not None and _cpu(before):
            # The sandbox's CPU since it started; the cell's is the part after `before`.
            result.cpu_user_seconds = max(0.0, cpu - _cpu(before))
            result.cpu_system_seconds = 0.0
        self._account(result, "stopped")
        return CellOutcome(
            "error",
            result,
            {"status": "error", "ename": "SandboxStopped", "evalue": self.lost, "traceback": []},
            session_lost=self.lost,
        )

    def _result(self, limits: ResourceLimits, wall: float, **fields: Any) -> ExecutionResult:
        result = ExecutionResult(
            tier=self.tier,
            stdout="",
            stderr="",
            execution_time_ms=round(wall * 1000),
            wall_seconds=wall,
            limits=limits,
            enforcement={
                **self.handle.enforcement,
                **_SESSION_ENFORCEMENT,
                **(
                    {}
                    if self._cpu_visible
                    else {
                        "cpu": "not enforced per cell: this sandbox's CPU time is not visible "
                        "from outside it"
                    }
                ),
            },
            language="python3",
            sandbox_detail=self.handle.detail,
            **{k: v for k, v in fields.items() if v is not None},
        )
        return result

    def _account(self, result: ExecutionResult, outcome: str) -> None:
        self.totals["cpu_seconds"] += (result.cpu_user_seconds or 0) + (
            result.cpu_system_seconds or 0
        )
        self.totals["wall_seconds"] += result.wall_seconds or 0
        self.totals["peak_memory_bytes"] = max(
            self.totals["peak_memory_bytes"], result.peak_memory_bytes or 0
        )
        self._audit(
            {
                "tier": self.tier.value,
                "event": "session-cell",
                "cell": self.cells,
                "outcome": outcome,
                "killed_by": result.killed_by,
                "wall_seconds": result.wall_seconds,
                "peak_memory_bytes": result.peak_memory_bytes,
            }
        )

    def usage(self) -> dict[str, Any]:
        """The sandbox's memory and CPU as the host sees them ({} where it cannot):
        never the worker's word, which any cell could forge."""
        return self.handle.usage() if self.alive else {}

    def close(self) -> None:
        """End the worker and its sandbox; nothing of it survives."""
        if self.handle.wait(timeout=0) is None:
            with contextlib.suppress(OSError):
                self.handle.send(b'{"type":"shutdown"}\n')
            if self.handle.wait(timeout=2) is None:
                self.handle.stop()
        else:
            self.handle.stop()
        self.lost = self.lost or "the session was closed"


_SESSION_ENFORCEMENT = {
    "timeout": "session (per cell; the worker is stopped)",
    "cpu": f"session (per cell, sampled every {CPU_POLL_SECONDS:g} s; the worker is stopped)",
    "output": "worker (per cell, drained past the cap)",
}


def _cpu(usage: dict[str, Any]) -> float:
    return float(usage.get("cpu_seconds") or 0.0)
