"""The Symbiont security tiers, ordered from weakest to strongest isolation."""

from __future__ import annotations

import enum
from functools import total_ordering

from .errors import ConfigError


@total_ordering
class SecurityTier(enum.Enum):
    """An isolation tier. Tiers compare by strength: ``NONE < TIER1 < TIER2 < TIER3``."""

    NONE = "None"
    TIER1 = "Tier1"
    TIER2 = "Tier2"
    TIER3 = "Tier3"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    @property
    def mechanism(self) -> str:
        return _MECHANISM[self]

    @property
    def display_name(self) -> str:
        """Symbiont's display form, e.g. ``Tier1 (Docker)``."""
        return f"{self.value} ({self.mechanism})"

    @property
    def aliases(self) -> tuple[str, ...]:
        return _ALIASES[self]

    @property
    def short_name(self) -> str:
        """The everyday name: native, docker, gvisor, firecracker."""
        return _ALIASES[self][1]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SecurityTier):
            return NotImplemented
        return self.rank < other.rank

    def __str__(self) -> str:
        return self.value

    @classmethod
    def accepted_names(cls) -> list[str]:
        return [name for tier in _ORDER for name in tier.aliases]

    @classmethod
    def parse(cls, name: SecurityTier | str) -> SecurityTier:
        """Return the tier for any accepted name (any case); raise :class:`ConfigError`
        listing the accepted names otherwise."""
        if isinstance(name, SecurityTier):
            return name
        if isinstance(name, str):
            key = name.strip().lower()
            for tier in _ORDER:
                if key in tier.aliases:
                    return tier
        raise ConfigError(
            f"unknown security tier {name!r}; accepted (any case): "
            + ", ".join(cls.accepted_names())
        )


_ORDER = [SecurityTier.NONE, SecurityTier.TIER1, SecurityTier.TIER2, SecurityTier.TIER3]
_MECHANISM = {
    SecurityTier.NONE: "Native - No Isolation",
    SecurityTier.TIER1: "Docker",
    SecurityTier.TIER2: "gVisor",
    SecurityTier.TIER3: "Firecracker",
}
_ALIASES = {
    SecurityTier.NONE: ("none", "native", "tier0"),
    SecurityTier.TIER1: ("tier1", "docker"),
    SecurityTier.TIER2: ("tier2", "gvisor", "runsc"),
    SecurityTier.TIER3: ("tier3", "firecracker", "microvm"),
}
