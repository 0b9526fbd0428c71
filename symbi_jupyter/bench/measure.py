"""One way to time a cell, shared by ``symbi-jupyter bench`` and ``benchmarks/``: the
caller's wall clock around :meth:`SandboxOrchestrator.execute_code`, and the summary
of several such samples."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..limits import ResourceLimits
    from ..orchestrator import SandboxOrchestrator
    from ..result import ExecutionResult
    from ..tiers import SecurityTier

T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``call`` took on the caller's monotonic clock, and what it returned."""
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


@dataclasses.dataclass(frozen=True)
class TimedCell:
    """One cell as its caller saw it: the seconds ``execute_code`` took (policy, start-up,
    the code, the result and its audit record) and the result."""

    seconds: float
    result: ExecutionResult

    @property
    def prepared(self) -> bool:
        """Whether a sandbox made in advance took the cell (a pooled container or VM,
        a pre-started interpreter): ``startup_seconds == 0``."""
        return self.result.startup_seconds == 0.0


def time_cell(
    orch: SandboxOrchestrator,
    tier: SecurityTier | str,
    code: str,
    limits: ResourceLimits | None = None,
    **kwargs: Any,
) -> TimedCell:
    """Run ``code`` at ``tier`` through ``orch`` and time it from the caller's side."""
    seconds, result = timed(lambda: orch.execute_code(tier, code, limits=limits, **kwargs))
    return TimedCell(seconds, result)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Several samples of one figure: median, lowest and highest, and how many."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no samples")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_dict(self, unit: str = "seconds") -> dict[str, float | int]:
        return {
            f"median_{unit}": self.median,
            f"min_{unit}": self.low,
            f"max_{unit}": self.high,
            "runs": self.count,
        }
