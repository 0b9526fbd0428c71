"""The limits each sandbox mode gives an agent's runs, as configurable traits."""

from __future__ import annotations

import dataclasses
from typing import Any

from traitlets import Dict, TraitError, validate
from traitlets.config import Configurable

from ..errors import ConfigError
from ..limits import ResourceLimits
from .model import SandboxMode

#: Limits a mode may set: every limit but the network, which is the capability's.
MODE_LIMIT_NAMES = tuple(f.name for f in dataclasses.fields(ResourceLimits) if f.name != "network")


def _defaults(mode: SandboxMode) -> dict[str, Any]:
    return {
        k: v for k, v in dataclasses.asdict(mode.limits).items() if v is not None and k != "network"
    }


_HELP = """{mode} mode's limits, before the orchestrator's ceilings lower them:
    ResourceLimits field names ({names}) to numbers; a name left out means the
    ceiling. Default: {default}."""


def _trait(mode: SandboxMode) -> Dict:
    return Dict(
        default_value=_defaults(mode),
        config=True,
        help=_HELP.format(
            mode=mode.value, names=", ".join(MODE_LIMIT_NAMES), default=_defaults(mode)
        ),
    )


class SandboxModeLimits(Configurable):
    """The limits of the agent sandbox modes, for example::

        c.SandboxModeLimits.strict = {"max_memory_mb": 128, "timeout_seconds": 10}

    A mode never raises what the operator's ceilings set (see
    :func:`~.grants.clamp`); the network is the ``network`` capability's.
    """

    strict = _trait(SandboxMode.STRICT)
    moderate = _trait(SandboxMode.MODERATE)
    permissive = _trait(SandboxMode.PERMISSIVE)

    @validate("strict", "moderate", "permissive")
    def _valid_limits(self, proposal: Any) -> dict[str, Any]:
        value = proposal["value"]
        unknown = sorted(set(value) - set(MODE_LIMIT_NAMES))
        if unknown:
            raise TraitError(
                f"SandboxModeLimits.{proposal['trait'].name}: unknown limit "
                f"{', '.join(unknown)}; accepted: {', '.join(MODE_LIMIT_NAMES)}"
            )
        try:
            ResourceLimits(**value)
        except ConfigError as exc:
            raise TraitError(f"SandboxModeLimits.{proposal['trait'].name}: {exc}") from None
        return value

    def limits(self, mode: SandboxMode) -> ResourceLimits:
        """``mode``'s limits (network aside)."""
        return ResourceLimits(**getattr(self, mode.value.lower()))
