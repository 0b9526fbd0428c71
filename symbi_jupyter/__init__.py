"""symbi-jupyter: run notebook code under Symbiont's security-tier model."""

from __future__ import annotations

from .errors import (
    ConfigError,
    Interrupted,
    MapInterrupted,
    NodeLost,
    PolicyViolation,
    SymbiError,
    TierUnavailable,
)
from .limits import ResourceLimits
from .result import ExecutionResult
from .tiers import SecurityTier

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExecutionResult",
    "Interrupted",
    "MapInterrupted",
    "NodeLost",
    "PolicyViolation",
    "ResourceLimits",
    "SandboxOrchestrator",
    "SecurityTier",
    "SymbiError",
    "TierUnavailable",
    "compare",
]


def __getattr__(name: str) -> object:
    # The orchestrator pulls in traitlets config machinery; import it on first use.
    if name == "SandboxOrchestrator":
        from .orchestrator import SandboxOrchestrator

        return SandboxOrchestrator
    if name == "compare":
        from .render import compare

        return compare
    raise AttributeError(name)


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext symbi_jupyter``: register the %%symbi and agent magics. Both use the
    default orchestrator (:func:`~.orchestrator.default_orchestrator`), as agents loaded
    without one do, so %config SandboxOrchestrator... applies to all of them."""
    from .agent_magics import AgentMagics
    from .magics import SymbiMagics

    symbi = SymbiMagics(shell=ipython)
    agents = AgentMagics(shell=ipython, orchestrator=symbi.orchestrator)
    for magics in (symbi, agents):
        ipython.register_magics(magics)  # type: ignore[attr-defined]


def unload_ipython_extension(ipython: object) -> None:
    """Stop the sandboxes' helper processes when the extension is unloaded; a later
    load makes a new default orchestrator from the configuration as it is then."""
    from .orchestrator import forget_default_orchestrator

    magics = ipython.magics_manager.registry.get("SymbiMagics")  # type: ignore[attr-defined]
    if magics is not None:
        magics.orchestrator.close()
    forget_default_orchestrator()
