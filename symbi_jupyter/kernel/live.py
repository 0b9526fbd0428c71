"""The symbi kernel's live line: while a cell runs, its elapsed time, memory now and
CPU %, from usage samples taken outside the sandbox (as ``%%symbi`` shows them)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from ..limits import ResourceLimits
from ..render import LiveLine
from ..sampling import UsageSample, UsageSampler
from ..tiers import SecurityTier


class KernelLiveLine:
    """One cell's live line: a display shown at the first sample (a cell that ends
    sooner never shows one), updated in place from the sampling thread, and emptied
    when the cell ends, before its statistics are displayed as usual."""

    #: Seconds between display updates, so a front end is not flooded.
    MIN_UPDATE_SECONDS = 0.5

    def __init__(self, kernel: Any, tier: SecurityTier, limits: ResourceLimits,
                 interval: float) -> None:
        self.kernel = kernel
        self.tier, self.limits = tier, limits
        self.display_id = uuid.uuid4().hex
        self.sampler = UsageSampler(interval, self.update)
        self._lock = threading.Lock()
        self._shown = False
        self._done = False
        self._last = 0.0

    def start(self, usage: Any) -> None:
        """Sample with ``usage`` (the worker handle's probe)."""
        self.sampler.started({"usage": usage})

    def update(self, sample: UsageSample) -> None:
        """Called from the sampling thread; ipykernel's iopub socket takes messages
        from any thread."""
        with self._lock:
            if self._done:
                return
            if self._shown and sample.elapsed_seconds - self._last < self.MIN_UPDATE_SECONDS:
                return
            self._last = sample.elapsed_seconds
            line = LiveLine(self.tier, self.limits, sample)
            self._send("update_display_data" if self._shown else "display_data",
                       {"text/plain": str(line), "text/html": line._repr_html_()})
            self._shown = True

    def stop(self) -> None:
        self.sampler.stop()
        with self._lock:
            self._done = True
            if self._shown:
                self._send("update_display_data", {"text/plain": ""})

    def _send(self, kind: str, data: dict[str, str]) -> None:
        self.kernel.send_response(self.kernel.iopub_socket, kind, {
            "data": data, "metadata": {}, "transient": {"display_id": self.display_id},
        })
