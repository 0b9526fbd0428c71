"""symbi-jupyter: run notebook code under Symbiont's security-tier model."""

from __future__ import annotations

from .errors import ConfigError, PolicyViolation, SymbiError, TierUnavailable
from .limits import ResourceLimits
from .result import ExecutionResult
from .tiers import SecurityTier

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExecutionResult",
    "PolicyViolation",
    "ResourceLimits",
    "SecurityTier",
    "SymbiError",
    "TierUnavailable",
]
