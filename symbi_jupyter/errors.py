"""Exceptions raised by symbi-jupyter.

A limit that stops the code is not an exception: it is an :class:`ExecutionResult`
with ``success=False`` and ``killed_by`` set. The :class:`SymbiError` exceptions mean
the code was never run (or could not be run as asked); :class:`Interrupted`, that the
user stopped it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import ExecutionResult


class SymbiError(Exception):
    """Base class of every error symbi-jupyter raises on purpose."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback: the message is the whole story.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class PolicyViolation(SymbiError):
    """The request is refused by policy: native off, production guard, a ceiling,
    an executable or directory that is not allowed."""


class TierUnavailable(SymbiError):
    """The tier cannot run on this host; the message says what is missing and how to
    provide it. Never answered by running at another tier."""


class NodeLost(TierUnavailable):
    """A cluster lost the node a run was on, mid-run: the run's result and state are
    gone with it. ``node`` is that node (``ADDRESS/NODE_ID``), or None if the run was
    lost before a node took it."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class ConfigError(SymbiError):
    """A bad configuration value, file, environment variable or tier name."""


class Interrupted(KeyboardInterrupt):
    """The stop button (SIGINT) stopped a sandboxed run, whose output so far and
    statistics were shown; ``result`` is that run's :class:`ExecutionResult`. Still a
    KeyboardInterrupt, so that it stops what runs the cell (Run All, a loop of
    ``run_cell_magic`` calls)."""

    def __init__(self, message: str, result: ExecutionResult | None = None) -> None:
        super().__init__(message)
        self.result = result

    def _render_traceback_(self) -> list[str]:
        # One line: the sandbox's output already says where the code was stopped.
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


class MapInterrupted(Interrupted):
    """The stop button stopped an ``orch.map``: its running items were stopped and
    the rest never started. ``results`` holds, in input order, each item's
    :class:`ExecutionResult` (finished, or stopped: ``interrupted="ended"``), or None
    for an item that never started."""

    def __init__(self, message: str, results: list[ExecutionResult | None]) -> None:
        super().__init__(message)
        self.results = results
