"""Samples of a running sandbox's memory and CPU, taken from outside it while it runs:
the live line of ``%%symbi`` and the memory sparkline of the HTML badge."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

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
    """Calls a sandbox's usage probe every ``interval`` seconds, from the moment the
    sandbox reports it has started until :meth:`stop`. All samplers of a process share
    one thread (:class:`_Ticker`), so a run pays no thread start for its figures."""

    def __init__(
        self, interval: float, on_sample: Callable[[UsageSample], None] | None = None
    ) -> None:
        self.interval = interval
        self.on_sample = on_sample
        self.samples: list[UsageSample] = []
        self._lock = threading.Lock()  # held by a tick; stop() waits for it
        self._probe: Callable[[], dict[str, Any]] | None = None
        self._started = 0.0
        self._previous: tuple[float, float] | None = None
        self._stopped = False
        self.due = 0.0

    def started(self, facts: dict[str, Any]) -> None:
        """The backend's on_started callback: begin sampling with its ``usage`` probe."""
        probe = facts.get("usage")
        if probe is None or self._probe is not None:
            return
        self._probe = probe
        self._started = time.monotonic()
        self.due = self._started + self.interval
        _TICKER.add(self)

    def tick(self) -> None:
        """Take one sample (called by the shared thread when ``due``)."""
        with self._lock:
            if self._stopped or self._probe is None:
                return
            self.due += self.interval
            try:
                figures = self._probe()
            except Exception:  # a sandbox going away mid-read ends the sampling
                logger.debug("usage probe failed; sampling stops", exc_info=True)
                self._stopped = True
                return
            if not figures:
                return
            now = time.monotonic()
            cpu = figures.get("cpu_seconds")
            percent = None
            if cpu is not None and self._previous is not None and now > self._previous[0]:
                percent = max(0.0, 100.0 * (cpu - self._previous[1]) / (now - self._previous[0]))
            if cpu is not None:
                self._previous = (now, cpu)
            sample = UsageSample(now - self._started, figures.get("memory_bytes"), cpu, percent)
            self.samples.append(sample)
            if len(self.samples) > MAX_SAMPLES:
                self.samples = self.samples[::2]
            if self.on_sample is not None:
                try:
                    self.on_sample(sample)
                except Exception:  # a display that failed must not stop the figures
                    logger.warning(
                        "the live usage display failed; it is not updated again", exc_info=True
                    )
                    self.on_sample = None

    def stop(self) -> list[list[float]] | None:
        """Stop; the memory samples as [[seconds since start, bytes], ...], or None
        when fewer than two were taken (too short a run to draw)."""
        _TICKER.remove(self)
        with self._lock:  # a tick under way finishes first; none follows
            self._stopped = True
        points = [
            [round(s.elapsed_seconds, 3), s.memory_bytes]
            for s in self.samples
            if s.memory_bytes is not None
        ]
        return points if len(points) >= 2 else None


class _Ticker:
    """One daemon thread that ticks every active sampler when it is due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._samplers: set[UsageSampler] = set()
        self._thread: threading.Thread | None = None

    def add(self, sampler: UsageSampler) -> None:
        with self._cond:
            self._samplers.add(sampler)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="symbi-usage-sampler", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def remove(self, sampler: UsageSampler) -> None:
        with self._cond:
            self._samplers.discard(sampler)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._samplers:
                    self._cond.wait()
                now = time.monotonic()
                due = [s for s in self._samplers if s.due <= now]
                if not due:
                    self._cond.wait(min(s.due for s in self._samplers) - now)
                    continue
            for sampler in due:  # outside the lock: a probe reads files
                sampler.tick()


_TICKER = _Ticker()
