"""The symbi kernel's view of a running cell: usage samples taken outside the sandbox
(the badge's memory sparkline, as ``%%symbi`` has them) and, from the first sample on,
a live line (elapsed time, memory now, CPU %) that the cell's statistics replace."""

from __future__ import annotations

import uuid
from typing import Any

from ..limits import ResourceLimits
from ..render import LiveLine, LiveUpdates
from ..result import ExecutionResult
from ..sampling import UsageSampler
from ..tiers import SecurityTier


class KernelLiveLine(LiveUpdates):
    """One cell's samples, and its live line when ``show`` is set: a display shown at
    the first sample (a cell that ends sooner never shows one), updated in place from
    the sampling thread (ipykernel's iopub takes messages from any thread).

    The live display has HTML only: a front end that does not follow display updates
    (``jupyter console``) prints a display's text once, and "running 251 ms" would
    stay there, stale. When the cell ends the display becomes its statistics
    (:meth:`finish`), so no empty output is left in a saved notebook."""

    def __init__(
        self,
        kernel: Any,
        tier: SecurityTier,
        limits: ResourceLimits,
        interval: float,
        show: bool = True,
    ) -> None:
        super().__init__(tier, limits)
        self.kernel = kernel
        self.show = show
        self.display_id = uuid.uuid4().hex
        self.sampler = UsageSampler(interval, self.update if show else None)

    def start(self, usage: Any) -> None:
        """Sample with ``usage`` (the worker handle's probe)."""
        self.sampler.started({"usage": usage})

    def stop(self) -> list[list[float]] | None:
        """No more samples or updates; the memory samples (as ``UsageSampler.stop``)."""
        samples = self.sampler.stop()
        self.close()
        return samples

    def finish(self, result: ExecutionResult | None, bundle: dict[str, Any] | None) -> bool:
        """Put ``bundle`` (the cell's statistics) in the live line's place; with none
        (statistics off), the line's last state, marked ended. False when no line
        was shown (the statistics are then displayed as usual)."""
        if not self.shown:
            return False
        if bundle is None:
            last = LiveLine(self.tier, self.limits, self.last_sample, ended=True)
            bundle = {"text/plain": str(last), "text/html": last._repr_html_()}
        self._send("update_display_data", bundle)
        return True

    def _show(self, line: LiveLine, first: bool) -> None:
        self._send(
            "display_data" if first else "update_display_data", {"text/html": line._repr_html_()}
        )

    def _send(self, kind: str, data: dict[str, Any]) -> None:
        self.kernel.send_response(
            self.kernel.iopub_socket,
            kind,
            {
                "data": data,
                "metadata": {},
                "transient": {"display_id": self.display_id},
            },
        )
