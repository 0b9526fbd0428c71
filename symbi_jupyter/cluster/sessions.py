"""Kernel sessions on a node: the node side of a remote :class:`WorkerSession`.

A client's session is a worker started by the node's own orchestrator
(:meth:`SandboxOrchestrator.open_session`: the node's policy, its audit chain) under
the stricter of both policies, held here by the node's agent under the session's id.
Each cell runs in a thread of the agent whose :class:`StopButton` is the client's
interrupt, so the worker is interrupted, given its grace period and, past it,
stopped, exactly as a local kernel's SIGINT does. Its messages stream back as they
come.

A session outlives neither its client nor the node: the agent closes the sessions of
a client whose job has died (looked at every ``WATCH_SECONDS``), and the node's
``cluster down`` or ``shutdown`` closes them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import PolicyViolation, SymbiError
from ..limits import ResourceLimits
from ..sandboxes.worker import WorkerSession

if TYPE_CHECKING:
    from .agent import Event, NodeAgent, _Run

logger = logging.getLogger(__name__)

#: The per-cell limits a client may change between cells (the others hold for the
#: whole worker, decided when it started).
CELL_LIMITS = ("timeout_seconds", "max_cpu_seconds", "max_output_bytes")


@dataclasses.dataclass
class _Hosted:
    session: WorkerSession
    job_id: str
    run: _Run | None = None


def lower(
    asked: ResourceLimits | None, session: ResourceLimits, node: ResourceLimits
) -> ResourceLimits:
    """A cell's limits on this node: what the client asked, each per-cell limit no
    higher than the node's ceiling; the rest the session's."""
    if asked is None:
        return session
    values = dataclasses.asdict(session)
    for name in CELL_LIMITS:
        given, ceiling = getattr(asked, name), getattr(node, name, None)
        if given is None:
            continue
        values[name] = given if ceiling is None else min(given, ceiling)
    return ResourceLimits(**values)


class SessionHost:
    """The sessions of one node's agent."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent
        self._sessions: dict[str, _Hosted] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, request: dict[str, Any]) -> tuple[Any, ...]:
        """Start the session ``request`` asks for: ``("opened", fields)`` or
        ``("refused", error class, message, node, audit hash)``."""
        from .agent import _hash, stricter

        agent, orch = self.agent, self.agent.orchestrator
        try:
            tier = agent.offered_tier(request)
            session = orch.open_session(
                tier,
                stricter(request["limits"], request["ceilings"], orch.ceilings()),
                request["env"],
                interrupt_grace_seconds=request["interrupt_grace_seconds"],
            )
        except SymbiError as exc:
            side = "policy" if isinstance(exc, PolicyViolation) else "host"
            message = f"node {agent.label} refused the session ({side} of the node): {exc}"
            return (
                "refused",
                type(exc).__name__,
                message,
                agent.label,
                _hash(orch.last_audit_record()),
            )
        with self._lock:
            self._sessions[request["session_id"]] = _Hosted(session, request["job_id"])
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="symbi-session-watch", daemon=True
                )
                self._watcher.start()
        return (
            "opened",
            {
                "node": agent.label,
                "limits": session.limits,
                "info": session.info,
                "startup_seconds": session.startup_seconds,
                "audit_hash": _hash(orch.last_audit_record()),
            },
        )

    def execute(self, session_id: str, cell: dict[str, Any]) -> Iterator[list[Event]]:
        """Run one cell, streaming ``("message", msg)`` events and last ``("outcome",
        CellOutcome, state)`` or ``("lost", why)``."""

        from .agent import _Run, watched

        hosted = self._sessions.get(session_id)
        if hosted is None:
            yield [("lost", f"node {self.agent.label} holds no such session (its agent restarted)")]
            return
        run = _Run(f"{session_id}/{cell['cell_name']}")
        hosted.run = run
        session = hosted.session
        worker = threading.Thread(
            target=self._work,
            args=(run, hosted, cell),
            name=f"symbi-cell-{run.run_id}",
            daemon=True,
        )
        worker.start()
        try:
            yield from watched(
                run, ("outcome", "lost"), lambda: self.agent.client_gone(hosted.job_id)
            )
        finally:
            run.stop("its stream ended")
            worker.join()
            hosted.run = None
            if not session.alive:
                self.close(session_id)

    def _work(self, run: _Run, hosted: _Hosted, cell: dict[str, Any]) -> None:
        session = hosted.session
        with run.button.applied():
            try:
                outcome = session.execute(
                    cell["code"],
                    lambda message: run.put(("message", message)),
                    limits=lower(
                        cell["limits"], session.limits, self.agent.orchestrator.ceilings()
                    ),
                    silent=cell["silent"],
                    cell_name=cell["cell_name"],
                    source=cell["source"],
                )
                outcome.result.node = self.agent.label
                lost = self.agent.lost_because(run)
                if lost is not None:  # the node or the cluster went, not the cell
                    with contextlib.suppress(Exception):
                        session.close()
                    run.end(("lost", lost))
                    return
                state = self.state(session)
                # The node's record of this cell (written in this thread), which the
                # client's own record names.
                state["audit"] = self.agent.orchestrator.last_audit_record()
                run.end(("outcome", outcome, state))
            except BaseException as exc:
                why = self.agent.lost_because(run) or (
                    f"node {self.agent.label}: {type(exc).__name__}: {exc}"
                )
                with contextlib.suppress(Exception):
                    session.close()
                run.end(("lost", why))

    @staticmethod
    def state(session: WorkerSession) -> dict[str, Any]:
        """What the client mirrors of a session after each cell."""
        return {
            "cells": session.cells,
            "totals": dict(session.totals),
            "lost": None if session.alive else (session.lost or "the worker ended"),
        }

    def _get(self, session_id: str) -> WorkerSession | None:
        hosted = self._sessions.get(session_id)
        return hosted.session if hosted is not None else None

    def interrupt(self, session_id: str) -> bool:
        """The client's stop button: the running cell is interrupted as SIGINT would."""
        hosted = self._sessions.get(session_id)
        if hosted is None:
            return False
        run = hosted.run
        if run is not None:
            run.stop("interrupted by its client")
        else:
            hosted.session.interrupt()
        return True

    def request(
        self, session_id: str, kind: str, timeout: float, fields: dict[str, Any]
    ) -> dict[str, Any]:
        session = self._get(session_id)
        if session is None:
            return {"status": "error", "ename": "SessionLost", "evalue": "no such session"}
        return session.request(kind, timeout=timeout, **fields)

    def usage(self, session_id: str) -> dict[str, Any]:
        session = self._get(session_id)
        return session.usage() if session is not None else {}

    def lost(self, session_id: str) -> str | None:
        """None while the session lives; why it is gone otherwise."""
        session = self._get(session_id)
        if session is None:
            return f"node {self.agent.label} holds no such session"
        return None if session.alive else (session.lost or "the worker ended")

    def close(self, session_id: str, why: str = "its client closed it") -> bool:
        with self._lock:
            hosted = self._sessions.pop(session_id, None)
        if hosted is None:
            return False
        logger.info("closing session %s: %s", session_id, why)
        if hosted.run is not None:
            hosted.run.stop(why)
        hosted.session.close()
        return True

    def close_all(self, why: str) -> int:
        with self._lock:
            ids = list(self._sessions)
        return sum(self.close(session_id, why) for session_id in ids)

    def _watch(self) -> None:
        """Close the sessions of clients that went away, between cells too."""
        import time

        from .agent import WATCH_SECONDS

        while True:
            time.sleep(WATCH_SECONDS)
            with self._lock:
                hosted = list(self._sessions.items())
            for session_id, entry in hosted:
                with contextlib.suppress(Exception):
                    why = self.agent.client_gone(entry.job_id)
                    if why is not None:
                        self.close(session_id, why)
