"""What an agent definition holds: the agent, its sandbox mode, capabilities,
triggers and actions. Parsing is in :mod:`.parser`, running in :mod:`.runner`."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..limits import ResourceLimits
from ..tiers import SecurityTier

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator
    from ..result import ExecutionResult
    from .grants import Permissions
    from .runner import ActionResult, Emitted

#: Capability -> what it grants. Each grants only what the orchestrator's policy allows.
CAPABILITIES: dict[str, str] = {
    "network": "the network, where the policy allows it (not in Strict mode)",
    "local_filesystem": "the notebook directory: read-only in Moderate mode, "
    "read-write in Permissive mode, none in Strict mode",
}


class SandboxMode(enum.Enum):
    """How tightly an agent is held below its tier's ceilings.

    Each mode's limits are defaults clamped to the operator's ceilings: a mode never
    raises a limit the policy sets.
    """

    STRICT = "Strict"
    MODERATE = "Moderate"
    PERMISSIVE = "Permissive"

    @property
    def limits(self) -> ResourceLimits:
        """The mode's default limits (network aside: that is the capability's);
        :class:`~.modes.SandboxModeLimits` configures them."""
        return _MODE_LIMITS[self]

    @property
    def mount(self) -> str | None:
        """How the notebook directory is mounted for ``local_filesystem``: ``ro``,
        ``rw``, or None (not at all)."""
        return _MODE_MOUNTS[self]

    @property
    def allows_network(self) -> bool:
        return self is not SandboxMode.STRICT

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, name: SandboxMode | str) -> SandboxMode:
        """The mode for a name (any case); :class:`ConfigError` listing the modes
        otherwise."""
        if isinstance(name, SandboxMode):
            return name
        for mode in cls:
            if isinstance(name, str) and name.strip().lower() == mode.value.lower():
                return mode
        raise ConfigError(
            f"unknown sandbox mode {name!r}; accepted (any case): "
            + ", ".join(mode.value for mode in cls)
        )


_MODE_LIMITS = {
    SandboxMode.STRICT: ResourceLimits(
        max_memory_mb=256,
        max_cpu_seconds=10,
        max_cpu_cores=1,
        timeout_seconds=30,
        max_processes=32,
        max_file_size_mb=10,
        max_output_bytes=1024 * 1024,
    ),
    SandboxMode.MODERATE: ResourceLimits(
        max_memory_mb=1024,
        max_cpu_seconds=60,
        max_cpu_cores=2,
        timeout_seconds=120,
        max_processes=128,
        max_file_size_mb=100,
    ),
    # Symbiont's native defaults; cores and output up to the ceilings.
    SandboxMode.PERMISSIVE: ResourceLimits(
        max_memory_mb=2048,
        max_cpu_seconds=300,
        timeout_seconds=300,
        max_processes=256,
        max_file_size_mb=100,
    ),
}
_MODE_MOUNTS = {SandboxMode.STRICT: None, SandboxMode.MODERATE: "ro", SandboxMode.PERMISSIVE: "rw"}


def summarize(text: str, width: int = 72) -> str:
    """Source as one line: whitespace runs collapsed, cut with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclasses.dataclass(frozen=True)
class Ref:
    """A value read when the action runs: ``payload``, ``payload.key.key``, or
    ``result.FIELD`` (a field of the previous action's result)."""

    path: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.path)


@dataclasses.dataclass(frozen=True)
class Run:
    """An action that runs code: ``execute_native``, ``execute`` or ``run_code``."""

    kind: str
    language: str
    code: str
    #: capabilities the action asks for beyond the agent's defaults (``needs: [...]``)
    needs: tuple[str, ...] = ()
    source: str = ""
    line: int = 0

    @property
    def summary(self) -> str:
        """The action in one line; code of several lines by its first line only."""
        lines = self.code.strip().splitlines()
        if self.kind == "run_code" and len(lines) > 1:
            return summarize(f'run_code("{self.language}", """{lines[0]} …""")')
        return summarize(self.source or f"{self.kind}(...)")

    @property
    def native(self) -> bool:
        return self.kind == "execute_native"

    @property
    def is_command(self) -> bool:
        """A shell command (``execute``/``execute_native``), not ``run_code``."""
        return self.kind != "run_code"


@dataclasses.dataclass(frozen=True)
class Emit:
    """``emit("name", value)``: record a value as one of the trigger's outputs."""

    name: str
    value: Any
    source: str = ""
    line: int = 0

    @property
    def summary(self) -> str:
        return summarize(self.source or f"emit({self.name!r}, ...)")


Action = Run | Emit


@dataclasses.dataclass(frozen=True)
class Trigger:
    """``on trigger "name" { actions }``."""

    name: str
    actions: tuple[Action, ...]
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Agent:
    """One agent definition, bound (or not) to the orchestrator that runs it.

    Bind it with :meth:`bind` or ``load(text, orchestrator=...)``; an agent not bound
    runs through the default orchestrator (configured as the magics' is).
    :meth:`trigger` runs a trigger's actions at the agent's tier, under its sandbox
    mode and capabilities, each through ``orchestrator.execute_code``.
    """

    name: str
    tier: SecurityTier
    sandbox: SandboxMode = SandboxMode.STRICT
    capabilities: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    triggers: Mapping[str, Trigger] = dataclasses.field(default_factory=dict)
    source: str = dataclasses.field(default="", repr=False)
    orchestrator: SandboxOrchestrator | None = dataclasses.field(
        default=None, repr=False, compare=False
    )
    #: the notebook directory ``local_filesystem`` gives access to (absolute)
    directory: str | None = dataclasses.field(default=None, compare=False)

    def bind(
        self, orchestrator: SandboxOrchestrator, directory: str | os.PathLike[str] | None = None
    ) -> Agent:
        """A copy of this agent that runs through ``orchestrator``; ``directory`` is
        its notebook directory (default: the current working directory)."""
        path = os.path.abspath(directory or os.getcwd())
        return dataclasses.replace(self, orchestrator=orchestrator, directory=path)

    def has(self, capability: str) -> bool:
        return capability in self.capabilities

    def trigger(
        self,
        name: str,
        payload: Any = None,
        *,
        on_output: Callable[[str, bytes], None] | None = None,
        on_result: Callable[[ActionResult], None] | None = None,
        limits: ResourceLimits | None = None,
    ) -> list[ExecutionResult | Emitted]:
        """Run the actions of trigger ``name`` in order and return their results
        (an :class:`ExecutionResult` per code action, an :class:`Emitted` per emit).

        ``payload`` (anything JSON can hold) reaches the code as JSON in the
        environment variable ``SYMBI_PAYLOAD``, never in a command line. The trigger
        stops at the first action that does not succeed; its result is the last.

        ``limits`` (the limit flags of ``%symbi_trigger`` and ``symbi-jupyter run``)
        lower the sandbox mode's limits, never raise them; one above the operator's
        ceiling is refused (audited) before anything runs.
        """
        from .runner import run_trigger

        return run_trigger(
            self, name, payload, on_output=on_output, on_result=on_result, limits=limits
        )

    def permissions(self) -> Permissions:
        """What the bound orchestrator's policy will and will not permit this agent."""
        from .grants import permissions

        return permissions(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        from .render import render_card_text

        printer.text(render_card_text(self))

    def _repr_html_(self) -> str:
        from .render import render_card_html

        return render_card_html(self)
