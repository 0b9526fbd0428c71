"""The worker protocol, both halves: :mod:`.agent` runs inside a sandbox (stdlib only,
shipped as source), :mod:`.session` drives it from the host in JSON lines."""

from __future__ import annotations

from .agent import BOOTSTRAP
from .session import CellOutcome, SessionLost, WorkerSession, worker_source

__all__ = ["BOOTSTRAP", "CellOutcome", "SessionLost", "WorkerSession", "worker_source"]
