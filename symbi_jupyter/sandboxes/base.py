"""The interface every sandbox backend implements."""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable
from traitlets.traitlets import MetaHasTraits

from ..errors import TierUnavailable
from ..limits import ResourceLimits
from ..policy import language_spec
from ..result import ExecutionResult
from ..tiers import SecurityTier
from .identities import RunIdentities

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


@dataclasses.dataclass(frozen=True)
class RunPolicy:
    """What the orchestrator decided for one run, once. A backend reads it and checks
    none of it again: every refusal is the orchestrator's, so every one is audited."""

    #: the language's interpreter, by name (a container or guest finds it inside)
    interpreter: str
    #: the file the code is written to
    filename: str
    #: the checked working directory: where tier None's private run directories are,
    #: and whose files every tier shows its runs (None: it does not exist)
    working_directory: Path | None = None
    #: tier None: the allowlisted real path that is executed
    executable: str | None = None
    #: tier None: that interpreter's path as found, its argv[0] (through it a
    #: virtualenv's bin/python3 finds its environment)
    argv0: str | None = None
    #: tier None: the arguments after argv[0] of a command run without a shell, in
    #: place of the code file (None: the interpreter runs the code file)
    arguments: tuple[str, ...] | None = None
    #: tier None: where the run starts (a directory of the host, a volume's); None: its
    #: own run directory
    start_directory: str | None = None
    #: tier None: the host environment variables a run gets
    env_passthrough: tuple[str, ...] = ()
    #: tier None: whether OS limits are applied
    enforce_resource_limits: bool = True

    @classmethod
    def for_language(cls, language: str) -> RunPolicy:
        """A policy no orchestrator decided (a probe, the image check): the language's
        interpreter and file name, nothing for tier None."""
        return cls(*language_spec(language))


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
    #: extra mounts for this request only, HOST:CONTAINER[:ro|rw] (container tiers)
    volumes: tuple[str, ...] = ()
    on_output: OutputCallback | None = None
    #: called with the backend's facts once the code has started (pids, cgroups)
    on_started: Callable[[dict[str, Any]], None] | None = None
    code_sha256: str = ""
    #: what the orchestrator decided; without it, RunPolicy.for_language(language)
    policy: RunPolicy = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = RunPolicy.for_language(self.language)


class WorkerHandle(abc.ABC):
    """A long-lived worker process inside a sandbox, as a kernel session uses it: bytes
    go to its stdin with :meth:`send`; its stdout reaches the ``on_output`` callback
    of the request that started it, uncapped (the worker caps each cell itself)."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Write to the worker's stdin; :class:`BrokenPipeError` once it is gone."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Destroy the worker and its sandbox now; nothing of it survives."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        """How the sandbox ended (``killed_by`` says which limit stopped it), or None
        if it still runs after ``timeout`` seconds."""

    def usage(self) -> dict[str, Any]:
        """The sandbox's figures seen from outside it: ``memory_bytes``,
        ``peak_memory_bytes``, ``cpu_seconds`` and ``method``; empty if unknown."""
        return {}

    def reset_peak(self) -> bool:
        """Restart the sandbox's peak-memory high-water mark; False if it cannot."""
        return False

    @property
    def enforcement(self) -> dict[str, str]:
        """How each limit is enforced for this worker."""
        return {}

    @property
    def detail(self) -> str | None:
        """What runs the worker within its tier, in words (a VMM and its acceleration)."""
        return None


class _SandboxMeta(abc.ABCMeta, MetaHasTraits):  # type(LoggingConfigurable) is MetaHasTraits
    pass


class Sandbox(LoggingConfigurable, metaclass=_SandboxMeta):
    """Base class of the sandbox backends: one per tier, configurable by traitlets."""

    tier: ClassVar[SecurityTier]
    #: whether requests may carry ``volumes`` (host directories mounted in)
    supports_volumes: ClassVar[bool] = False

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Probe (not guess) whether this tier can run here."""

    @abc.abstractmethod
    def run(self, request: ExecutionRequest) -> ExecutionResult:
        """Run one request to completion and return its result. Limits that stop the
        code are results, not exceptions; nothing the run started may survive it."""

    @functools.cached_property
    def run_identities(self) -> RunIdentities:
        """The block of host uids this backend's sandboxes lease their own from."""
        return RunIdentities(parent=self)

    def start_worker(self, request: ExecutionRequest) -> WorkerHandle:
        """Start ``request.code`` (the worker agent) as a long-lived process with a
        channel on its stdin and stdout. ``request.limits.timeout_seconds`` is ignored:
        the caller times each cell and stops the worker."""
        raise TierUnavailable(
            f"{self.tier.display_name} cannot host a kernel worker in this version"
        )

    def close(self) -> None:
        """Release long-lived resources (helper processes, clients)."""
