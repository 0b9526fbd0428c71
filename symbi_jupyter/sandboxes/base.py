"""The interface every sandbox backend implements."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable

from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..tiers import SecurityTier

#: Called with ("stdout" | "stderr", chunk) while the code runs.
OutputCallback = Callable[[str, bytes], None]


@dataclasses.dataclass(frozen=True)
class Availability:
    """Whether a tier can run on this host; if not, ``reason`` says what is missing
    and how to provide it."""

    ok: bool
    reason: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok


@dataclasses.dataclass
class ExecutionRequest:
    """One execution, after policy: what to run and under which effective limits."""

    tier: SecurityTier
    code: bytes
    language: str
    limits: ResourceLimits
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    executable: str | None = None
    keep_workdir: bool = False
    on_output: OutputCallback | None = None
    code_sha256: str = ""
    #: operator settings a backend may need (allowlist, working directory, ...)
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)


class _SandboxMeta(abc.ABCMeta, type(LoggingConfigurable)):  # type: ignore[misc]
    pass


class Sandbox(LoggingConfigurable, metaclass=_SandboxMeta):
    """Base class of the sandbox backends: one per tier, configurable by traitlets."""

    tier: ClassVar[SecurityTier]

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Probe (not guess) whether this tier can run here."""

    @abc.abstractmethod
    def run(self, request: ExecutionRequest) -> ExecutionResult:
        """Run one request to completion and return its result. Limits that stop the
        code are results, not exceptions; nothing the run started may survive it."""

    def close(self) -> None:
        """Release long-lived resources (helper processes, clients)."""
