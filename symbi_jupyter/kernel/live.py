"""The symbi kernel's live line: while a cell runs, its elapsed time, memory now and
CPU %, from usage samples taken outside the sandbox (as ``%%symbi`` shows them)."""

from __future__ import annotations

import uuid
from typing import Any

from ..limits import ResourceLimits
from ..render import LiveLine, LiveUpdates
from ..sampling import UsageSampler
from ..tiers import SecurityTier


class KernelLiveLine(LiveUpdates):
    """One cell's live line: a display shown at the first sample (a cell that ends
    sooner never shows one), updated in place from the sampling thread (ipykernel's
    iopub takes messages from any thread), and emptied when the cell ends, before its
    statistics are displayed as usual."""

    def __init__(
        self, kernel: Any, tier: SecurityTier, limits: ResourceLimits, interval: float
    ) -> None:
        super().__init__(tier, limits)
        self.kernel = kernel
        self.display_id = uuid.uuid4().hex
        self.sampler = UsageSampler(interval, self.update)

    def start(self, usage: Any) -> None:
        """Sample with ``usage`` (the worker handle's probe)."""
        self.sampler.started({"usage": usage})

    def stop(self) -> None:
        self.sampler.stop()
        if self.close():
            self._send("update_display_data", {"text/plain": ""})

    def _show(self, line: LiveLine, first: bool) -> None:
        self._send(
            "display_data" if first else "update_display_data",
            {"text/plain": str(line), "text/html": line._repr_html_()},
        )

    def _send(self, kind: str, data: dict[str, str]) -> None:
        self.kernel.send_response(
            self.kernel.iopub_socket,
            kind,
            {
                "data": data,
                "metadata": {},
                "transient": {"display_id": self.display_id},
            },
        )
