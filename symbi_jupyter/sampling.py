"""Samples of a running sandbox's memory and CPU, taken from outside it while it runs:
the live line of ``%%symbi`` and the memory sparkline of the HTML badge."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

#: The most samples kept for one run: past this, every other one is dropped, so a
#: long run keeps its whole shape at a coarser grain.
MAX_SAMPLES = 240


@dataclasses.dataclass(frozen=True)
class UsageSample:
    """One look at a running sandbox."""

    elapsed_seconds: float
    memory_bytes: int | None
    cpu_seconds: float | None
    #: CPU use since the previous sample, in percent of one core
    cpu_percent: float | None


class UsageSampler:
    """Calls a sandbox's usage probe every ``interval`` seconds in a thread, from the
    moment the sandbox reports it has started until :meth:`stop`."""

    def __init__(
        self, interval: float, on_sample: Callable[[UsageSample], None] | None = None
    ) -> None:
        self.interval = interval
        self.on_sample = on_sample
        self.samples: list[UsageSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def started(self, facts: dict[str, Any]) -> None:
        """The backend's on_started callback: begin sampling with its ``usage`` probe."""
        probe = facts.get("usage")
        if probe is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, args=(probe, time.monotonic()), name="symbi-usage-sampler",
            daemon=True,
        )
        self._thread.start()

    def _run(self, probe: Callable[[], dict[str, Any]], started: float) -> None:
        previous: tuple[float, float] | None = None
        while not self._stop.wait(self.interval):
            try:
                figures = probe()
            except Exception:  # a sandbox going away mid-read ends the sampling
                return
            if not figures:
                continue
            now = time.monotonic()
            cpu = figures.get("cpu_seconds")
            percent = None
            if cpu is not None and previous is not None and now > previous[0]:
                percent = max(0.0, 100.0 * (cpu - previous[1]) / (now - previous[0]))
            if cpu is not None:
                previous = (now, cpu)
            sample = UsageSample(now - started, figures.get("memory_bytes"), cpu, percent)
            self.samples.append(sample)
            if len(self.samples) > MAX_SAMPLES:
                self.samples = self.samples[::2]
            if self.on_sample is not None:
                try:
                    self.on_sample(sample)
                except Exception:  # a display that failed must not stop the figures
                    self.on_sample = None

    def stop(self) -> list[list[float]] | None:
        """Stop; the memory samples as [[seconds since start, bytes], ...], or None
        when fewer than two were taken (too short a run to draw)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        points = [[round(s.elapsed_seconds, 3), s.memory_bytes] for s in self.samples
                  if s.memory_bytes is not None]
        return points if len(points) >= 2 else None
