"""The outcome of one execution, with Symbiont's fields and our resource statistics.

Rendering lives in :mod:`symbi_jupyter.render`; the ``_repr_*_`` hooks here only
delegate so that IPython and Jupyter display a result without extra code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .limits import ResourceLimits
from .tiers import SecurityTier

# Why a run was stopped, as ExecutionResult.killed_by.
KILL_REASONS = (
    "timeout",
    "memory",
    "cpu",
    "processes",
    "file_size",
    "disk",
    "output",
    "signal",
    "protocol",
)
# What an interrupt (the stop button, SIGINT) left, as ExecutionResult.interrupted:
# "kept", the cell stopped and its session kept its state (the symbi kernel); "ended",
# the run ended with it (a one-shot run, whose sandbox is gone anyway); "lost", the cell
# did not stop in time and its session was stopped, its state lost.
INTERRUPT_OUTCOMES = ("kept", "ended", "lost")


@dataclasses.dataclass
class ExecutionResult:
    """What one execution produced and what it cost.

    ``exit_code`` follows Symbiont: the process's exit status, or ``-1`` when a signal
    ended it (the signal is in ``term_signal``). ``killed_by`` names the limit that
    stopped it, decided from evidence, or ``None``.
    """

    tier: SecurityTier
    stdout: str = ""
    stderr: str = ""
    exit_code: int = -1
    execution_time_ms: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    killed_by: str | None = None
    term_signal: int | None = None
    peak_memory_bytes: int | None = None
    memory_method: str | None = None
    cpu_user_seconds: float | None = None
    cpu_system_seconds: float | None = None
    wall_seconds: float = 0.0
    limits: ResourceLimits = dataclasses.field(default_factory=ResourceLimits)
    #: limit name -> how it was enforced ("cgroup", "rlimit", ...) or "not enforced: why".
    enforcement: dict[str, str] = dataclasses.field(default_factory=dict)
    #: every limit the run ran into, even one that did not stop it (a contained fork bomb).
    limits_reached: list[str] = dataclasses.field(default_factory=list)
    language: str = ""
    executable: str = ""
    code_sha256: str = ""
    workdir: str | None = None
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    #: seconds to make the sandbox ready (create and start a container, boot a VM),
    #: apart from wall_seconds; None where there is no such step, 0 when pooled in advance.
    startup_seconds: float | None = None
    #: [[seconds since start, resident bytes], ...] sampled from outside while the code
    #: ran (the sparkline); None for runs too short for two samples.
    memory_samples: list[list[float]] | None = None
    #: what ran it within the tier, in words (Tier3: "QEMU microvm · emulated (TCG)")
    sandbox_detail: str | None = None
    #: figures only the sandbox could tell (``cpu_user_seconds``, ``peak_memory_bytes``,
    #: ...), as it reported them: shown labelled so, never used for enforcement and
    #: never written to the audit log as fact; None where it reported none
    sandbox_reported: dict[str, float] | None = None
    #: an interrupt (the stop button) stopped the run: what it left, one of
    #: INTERRUPT_OUTCOMES ("kept": the session and its state live on); None if none did
    interrupted: str | None = None
    #: the code never ran: why, as ``"PolicyViolation: ..."`` (a refusal or a backend
    #: error). Only an item of ``orch.map`` carries one, where one item's refusal must
    #: not stop the others; a single run raises the error instead
    error: str | None = None
    #: where it ran: None on this host; on a cluster (SandboxOrchestrator.cluster_address),
    #: the node as ``ADDRESS/NODE_ID`` (its address and its Ray node id)
    node: str | None = None

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and self.killed_by is None

    @property
    def cpu_seconds(self) -> float | None:
        if self.cpu_user_seconds is None or self.cpu_system_seconds is None:
            return None
        return self.cpu_user_seconds + self.cpu_system_seconds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field, plus ``success``."""
        data = dataclasses.asdict(self)
        data["tier"] = self.tier.value
        data["success"] = self.success
        return data

    # -- display hooks: rendering itself lives in render.py ------------------------
    def __str__(self) -> str:
        from .render import render_text

        return render_text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        from .render import render_html

        return render_html(self)

    def _repr_markdown_(self) -> str:
        from .render import render_markdown

        return render_markdown(self)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from .render import render_mimebundle

        return render_mimebundle(self)
