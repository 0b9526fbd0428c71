"""The live line a cell shows while it runs, and the updates that keep it current."""

from __future__ import annotations

import html
import threading
from typing import Any

from ..limits import ResourceLimits
from ..tiers import SecurityTier
from .html_badge import TIER_COLOURS, tier_pill_html
from .summary import tier_words
from .words import MIB, format_bytes, format_duration


def follows_display_updates(request_metadata: Any) -> bool:
    """Whether the front end that sent an execute request keeps a display current.

    Notebook front ends (JupyterLab, Notebook 7, VS Code) name the cell they run
    (``cellId``) and follow ``update_display_data``; ``jupyter console`` and headless
    runners (nbclient, papermill) name none, and a console ignores updates, so a live
    line would leave it either a stale first state or, replaced in place, no statistics
    at all. Those get the statistics as an ordinary display at the end."""
    return isinstance(request_metadata, dict) and bool(request_metadata.get("cellId"))


class LiveLine:
    """What ``%%symbi`` shows while a cell runs (elapsed time, memory now, CPU %),
    updated in place and then replaced by the final statistics; ``ended``: its last
    state, where no statistics came to replace it."""

    def __init__(
        self, tier: SecurityTier, limits: ResourceLimits, sample: Any, ended: bool = False
    ) -> None:
        self.tier, self.limits, self.sample, self.ended = tier, limits, sample, ended

    def _parts(self) -> list[str]:
        s = self.sample
        parts = [
            f"{'ended after' if self.ended else 'running'} {format_duration(s.elapsed_seconds)}"
        ]
        if s.memory_bytes is not None:
            memory = f"memory {format_bytes(s.memory_bytes)}"
            if self.limits.max_memory_mb:
                memory += f" of {format_bytes(self.limits.max_memory_mb * MIB)}"
            parts.append(memory)
        if s.cpu_percent is not None:
            parts.append(f"CPU {s.cpu_percent:.0f} %")
        return parts

    def __str__(self) -> str:
        return " · ".join([f"[symbi] {tier_words(self.tier)}", *self._parts()])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour = TIER_COLOURS.get(self.tier, "#616161")
        return (
            f'<div class="symbi-live" data-tier="{html.escape(self.tier.value)}" '
            "style=\"display:inline-block;font-family:system-ui,-apple-system,'Segoe UI',"
            f'sans-serif;font-size:12px;border-left:4px solid {colour};padding:2px 8px">'
            f"{tier_pill_html(self.tier, self.tier.value)} "
            f"{html.escape(' · '.join(self._parts()))}</div>"
        )


class LiveUpdates:
    """Shows a :class:`LiveLine` from usage samples (called from the sampling thread):
    the first sample displays it, later ones update it in place at most every
    ``MIN_UPDATE_SECONDS``, none after :meth:`close`. A front end says how to show
    it (:meth:`_show`): ``%%symbi`` through IPython's display, the symbi kernel
    through its own messages."""

    #: Seconds between display updates, so a front end is not flooded.
    MIN_UPDATE_SECONDS = 0.5

    def __init__(self, tier: SecurityTier, limits: ResourceLimits) -> None:
        self.tier, self.limits = tier, limits
        self.shown = False
        self.closed = False
        self.last_sample: Any = None
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, sample: Any) -> None:
        with self._lock:
            if self.closed:
                return
            self.last_sample = sample
            if self.shown and sample.elapsed_seconds - self._last < self.MIN_UPDATE_SECONDS:
                return
            self._last = sample.elapsed_seconds
            self._show(LiveLine(self.tier, self.limits, sample), first=not self.shown)
            self.shown = True

    def close(self) -> bool:
        """No more updates; whether the line was ever shown."""
        with self._lock:
            self.closed = True
            return self.shown

    def _show(self, line: LiveLine, first: bool) -> None:
        raise NotImplementedError
