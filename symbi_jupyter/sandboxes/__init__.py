"""Sandbox backends, one module per tier, found through the entry-point group
``symbi_jupyter.sandboxes`` (as jupyter_client finds kernel provisioners)."""

from __future__ import annotations

from importlib.metadata import entry_points

from ..tiers import SecurityTier
from .base import Availability, ExecutionRequest, Sandbox

ENTRY_POINT_GROUP = "symbi_jupyter.sandboxes"

__all__ = ["ENTRY_POINT_GROUP", "Availability", "ExecutionRequest", "Sandbox", "sandbox_classes"]


def sandbox_classes() -> dict[SecurityTier, type[Sandbox]]:
    """The installed sandbox class for each tier that has one."""
    found: dict[SecurityTier, type[Sandbox]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        found[SecurityTier.parse(cls.tier)] = cls
    return found
