"""Sandbox backends, one module per tier, found through the entry-point group
``symbi_jupyter.sandboxes`` (as jupyter_client finds kernel provisioners)."""

from __future__ import annotations

from importlib.metadata import entry_points

from ..errors import TierUnavailable
from ..tiers import SecurityTier
from .base import Availability, ExecutionRequest, Sandbox

ENTRY_POINT_GROUP = "symbi_jupyter.sandboxes"

__all__ = [
    "ENTRY_POINT_GROUP",
    "Availability",
    "ExecutionRequest",
    "Sandbox",
    "sandbox_class",
    "sandbox_classes",
]


def sandbox_classes() -> dict[SecurityTier, type[Sandbox]]:
    """The installed sandbox class for each tier that has one."""
    found: dict[SecurityTier, type[Sandbox]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        found[SecurityTier.parse(cls.tier)] = cls
    return found


def sandbox_class(tier: SecurityTier) -> type[Sandbox]:
    """The backend of ``tier``, imported only now, through its entry point (named
    after the tier: none, tier1, ...), as jupyter_client finds its provisioners."""
    name = tier.value.lower()
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise TierUnavailable(
            f"{tier.display_name} is not implemented in this installation of symbi-jupyter "
            f"(no entry point {name!r} in the group {ENTRY_POINT_GROUP}; reinstall it); "
            "nothing runs at a weaker tier in its place"
        )
    point = next(iter(found))
    try:
        cls = point.load()
    except (ImportError, AttributeError) as exc:
        raise TierUnavailable(
            f"{tier.display_name}: its sandbox {point.value} cannot be loaded ({exc})"
        ) from None
    # A backend registered under another tier's name would run code at the wrong tier.
    if getattr(cls, "tier", None) is not tier:
        raise TierUnavailable(
            f"{tier.display_name}: the entry point {name} = {point.value} is not the "
            "sandbox of this tier; nothing runs in its place"
        )
    return cls
