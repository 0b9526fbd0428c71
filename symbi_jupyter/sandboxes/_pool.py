"""Sandboxes made in advance (started containers, booted VMs), each used at most once,
kept by configuration and refilled in the background; shared by the backends."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ReadyPool(Generic[T]):
    """Never-used sandboxes by key. ``discard`` destroys one; ``usable`` tells whether
    one that waited is still fit to take (a VM may have died meanwhile)."""

    def __init__(
        self,
        name: str,
        discard: Callable[[T], None],
        usable: Callable[[T], bool] = lambda item: True,
    ) -> None:
        self._name = name
        self._discard = discard
        self._usable = usable
        self._lock = threading.Lock()
        self._ready: dict[Hashable, list[T]] = {}
        self._filling: set[Hashable] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def take(self, key: Hashable) -> T | None:
        """The oldest waiting sandbox of ``key`` that is still usable, or None."""
        unfit: list[T] = []
        found = None
        with self._lock:
            waiting = self._ready.get(key, [])
            while waiting and found is None:
                item = waiting.pop(0)
                if self._usable(item):
                    found = item
                else:
                    unfit.append(item)
        for item in unfit:
            self._discard(item)
        return found

    def refill(self, key: Hashable, size: int, make: Callable[[], T]) -> None:
        """Make sandboxes of ``key`` in the background until ``size`` wait."""
        with self._lock:
            if self._closed or key in self._filling or len(self._ready.get(key, [])) >= size:
                return
            self._filling.add(key)

        def fill() -> None:
            try:
                while True:
                    with self._lock:
                        if self._closed or len(self._ready.get(key, [])) >= size:
                            return
                    try:
                        item = make()
                    except Exception:  # the next run makes its own and says why
                        logger.debug(
                            "%s pool: making a sandbox in advance failed", self._name, exc_info=True
                        )
                        return
                    with self._lock:
                        if not self._closed:
                            self._ready.setdefault(key, []).append(item)
                            continue
                    self._discard(item)
                    return
            finally:
                with self._lock:
                    self._filling.discard(key)

        if not self._start(fill, f"symbi-{self._name}-pool"):
            with self._lock:
                self._filling.discard(key)

    def later(self, job: Callable[[], None]) -> None:
        """Run ``job`` (a removal) in the background; :meth:`close` waits for it. Once
        closed, run it here: nothing waits for a thread started after close."""
        if not self._start(job, f"symbi-{self._name}-cleanup"):
            job()

    def _start(self, target: Callable[[], None], name: str) -> bool:
        """Start ``target`` in a thread :meth:`close` waits for; False once closed."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            if self._closed:
                return False
            # Started under the lock: another caller's pruning below must not take a
            # thread not yet started for one already finished.
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return True

    def close(self) -> None:
        """Destroy every waiting sandbox, including those being made right now, and
        wait for the removals already under way."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=120)
        with self._lock:
            waiting = [item for ready in self._ready.values() for item in ready]
            self._ready.clear()
        for item in waiting:
            self._discard(item)
