"""Agents in Symbiont's DSL, run through a :class:`SandboxOrchestrator`.

    from symbi_jupyter import agents

    [worker] = agents.load(text)   # or load(text, orchestrator=orch)
    results = worker.trigger("local_processing", payload={"file": "data.csv"})

Without ``orchestrator=`` the agents run through the default orchestrator, configured
as the magics' is (``$SYMBIONT_CONFIG``, Jupyter config files, ``SYMBIONT_*``).

See ``agent.lark`` for the grammar, :mod:`.grants` for what capabilities and sandbox
modes permit, and :mod:`.runner` for how a trigger runs.
"""

from __future__ import annotations

from .grants import Permissions, Verdict
from .model import CAPABILITIES, Agent, Emit, Ref, Run, SandboxMode, Trigger
from .modes import SandboxModeLimits
from .parser import load
from .runner import NOTEBOOK_ENV, PAYLOAD_ENV, ActionResult, Emitted

__all__ = [
    "CAPABILITIES",
    "NOTEBOOK_ENV",
    "PAYLOAD_ENV",
    "ActionResult",
    "Agent",
    "Emit",
    "Emitted",
    "Permissions",
    "Ref",
    "Run",
    "SandboxMode",
    "SandboxModeLimits",
    "Trigger",
    "Verdict",
    "load",
]
