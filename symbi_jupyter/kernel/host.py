"""What the symbi kernel's magic handlers share: the kernel they reach
(:class:`KernelHost`, provided by :class:`~.kernel.SymbiKernel`), their errors, and the
limits that hold for a whole worker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SymbiError
from ..limits import ResourceLimits
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator
    from ..render import ResultDisplay
    from ..sandboxes.worker import WorkerSession

#: Limits that hold for a whole worker: changing one needs a new worker.
SESSION_LIMITS = (
    "max_memory_mb",
    "max_cpu_cores",
    "max_processes",
    "max_file_size_mb",
    "max_disk_mb",
    "network",
)

CELL_MAGICS = ("%%symbi", "%%symbi_agent")


class KernelUsageError(SymbiError):
    """A kernel magic was given bad arguments."""


class Interrupted(SymbiError):
    """A kernel magic's sandboxed run was interrupted (and stopped)."""


class KernelHost(Protocol):
    """What :class:`KernelMagics` uses of its kernel (:class:`~.kernel.SymbiKernel`):
    the settings the magics change, the worker, the streams and the replies."""

    tier: str
    session_mode: str
    show_stats: bool
    stats_style: str
    compact_below_seconds: float
    live_stats: bool
    follows_updates: bool
    limits: ResourceLimits
    worker: WorkerSession | None

    @property
    def orchestrator(self) -> SandboxOrchestrator: ...
    @property
    def display_options(self) -> ResultDisplay: ...
    @property
    def agents(self) -> dict[str, Any]: ...
    @property
    def execution_count(self) -> int: ...
    @property
    def current_tier(self) -> SecurityTier: ...

    def _stream(self, name: str, text: str) -> None: ...
    def _display(self, obj: Any) -> None: ...
    def _error(
        self, ename: str, evalue: str, traceback: list[str] | None = None
    ) -> dict[str, Any]: ...
    def _ok(self) -> dict[str, Any]: ...
    def _check_allowed(self, tier: SecurityTier | str | None) -> SecurityTier: ...
    def _open_session(self) -> WorkerSession: ...
    def _close_session(self) -> None: ...
