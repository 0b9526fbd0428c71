"""The worker protocol, both halves: :mod:`.agent` (with :mod:`.agent_output` and
:mod:`.agent_code`) runs inside a sandbox, stdlib only, shipped as source by
:func:`.shipping.worker_source`; :mod:`.session` drives it from the host in JSON lines."""

from __future__ import annotations

from .agent import BOOTSTRAP
from .session import CellOutcome, SessionLost, WorkerSession
from .shipping import worker_source

__all__ = ["BOOTSTRAP", "CellOutcome", "SessionLost", "WorkerSession", "worker_source"]
