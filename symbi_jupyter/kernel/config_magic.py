"""``%config`` in the symbi kernel.

The kernel's policy is its operator's (``jupyter_symbi_config.py``, Symbiont's
``config.toml``, the kernelspec's environment), and a cell is the code the policy
guards against: a cell may make the policy stricter (lower a ceiling, switch native
execution or the network off, and back up to the operator's value), set how results
are shown, or look, and never loosen anything past what the operator set. Values are
Python literals: the cell's variables live in the sandbox, not in the kernel.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import TYPE_CHECKING, Any

from traitlets import TraitError

from ..errors import ConfigError, PolicyViolation
from ..limits import ResourceLimits, number
from ..tiers import SecurityTier
from .host import SESSION_LIMITS

if TYPE_CHECKING:
    from .host import KernelHost

#: SandboxOrchestrator traits a cell may tighten, and which way is stricter.
TIGHTENABLE = {
    "max_memory_mb": "lower",
    "max_cpu_seconds": "lower",
    "max_cpu_cores": "lower",
    "max_execution_time_seconds": "lower",
    "max_processes": "lower",
    "max_file_size_mb": "lower",
    "max_open_files": "lower",
    "max_disk_mb": "lower",
    "max_output_bytes": "lower",
    "allow_native_execution": "off",
    "allow_network": "off",
    "enforce_resource_limits": "on",
}
#: The kernel's presentation settings a cell may set freely.
PRESENTATION = {
    "SymbiKernel": ("show_stats", "stats_style", "live_stats", "compact_below_seconds"),
    "ResultDisplay": None,  # all of its traits
}
_ASSIGNMENT = re.compile(r"(\w+)\.(\w+)\s*=\s*(.+)", re.DOTALL)
_WAYS = {"lower": "lower it", "off": "switch it off", "on": "switch it on"}


class KernelConfig:
    """The handler of one kernel's ``%config`` lines; it keeps the operator's values
    (as the kernel started) as the bounds a cell cannot pass."""

    def __init__(self, kernel: KernelHost) -> None:
        self.kernel = kernel
        orchestrator = kernel.orchestrator
        self.operator = {name: getattr(orchestrator, name) for name in TIGHTENABLE}

    def __call__(self, line: str) -> None:
        line = line.strip()
        if not line:
            names = "\n".join(f"    {name}" for name in ("SandboxOrchestrator", *PRESENTATION))
            self.kernel._stream("stdout", f"Available objects for config:\n{names}\n")
            return
        assignment = _ASSIGNMENT.fullmatch(line)
        if assignment is None:
            if not line.isidentifier():
                raise ConfigError(f"%config takes CLASS, or CLASS.TRAIT = VALUE, not {line!r}")
            self.kernel._stream("stdout", self._shown(line))
            return
        cls, name, text = assignment.groups()
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(
                f"%config {cls}.{name}: {text.strip()!r} is not a literal (True, 512, "
                "'compact'); the cell's variables live in the sandbox, not in the kernel"
            ) from None
        if cls == "SandboxOrchestrator":
            self._tighten(name, value)
        else:
            self._present(cls, name, value)

    # -- the policy ------------------------------------------------------------------
    def _tighten(self, name: str, value: Any) -> None:
        kernel = self.kernel
        orchestrator = kernel.orchestrator
        way = TIGHTENABLE.get(name)
        if way is None:
            error = PolicyViolation(
                f"%config SandboxOrchestrator.{name}: the kernel's policy is its operator's "
                "(jupyter_symbi_config.py); a cell may only make it stricter, through "
                f"{', '.join(TIGHTENABLE)}"
            )
        elif not _stricter_or_equal(way, value, self.operator[name]):
            error = PolicyViolation(
                f"%config SandboxOrchestrator.{name} = {value!r} would loosen the "
                f"operator's {self.operator[name]!r}; a cell may only {_WAYS[way]} "
                "(the operator sets it in jupyter_symbi_config.py)"
            )
        else:
            error = None
        if error is not None:
            orchestrator.audit_refusal(
                kernel.current_tier, error, event="config", source="symbi kernel"
            )
            raise error
        before = _session_limits(kernel)
        try:
            setattr(orchestrator, name, value)
        except TraitError as exc:
            raise ConfigError(f"%config SandboxOrchestrator.{name}: {exc}") from None
        self._follow_ceiling()
        worker = kernel.worker
        if worker is None or not worker.alive:
            return
        after = _session_limits(kernel)
        native = kernel.current_tier is SecurityTier.NONE
        if (name == "allow_native_execution" and not value and native) or (
            before.network and not after.network
        ):
            # A switch turned off takes effect now: its worker goes.
            kernel._close_session()
            kernel._stream(
                "stdout", f"SandboxOrchestrator.{name} is off: the worker was stopped.\n"
            )
        elif _held(before) != _held(after):
            # A ceiling: the session's state is not thrown away for it unasked.
            kernel._stream(
                "stdout",
                f"SandboxOrchestrator.{name} now bounds %%symbi cells and the next worker; "
                "the running one keeps the limits it started with (its variables with "
                "it): %symbi_session restart applies it to the session now.\n",
            )

    def _follow_ceiling(self) -> None:
        """A lowered ceiling also lowers the kernel's own limits (``%symbi_limits``)
        that it would now be below, so the next cell is not refused for them."""
        kernel = self.kernel
        ceilings = kernel.orchestrator.ceilings()
        lowered = {
            field: None
            for field, asked in kernel.limits.to_dict().items()
            if asked is not None and _above(asked, getattr(ceilings, field, None))
        }
        if lowered:
            kernel.limits = dataclasses.replace(kernel.limits, **lowered)

    # -- presentation ----------------------------------------------------------------
    def _present(self, cls: str, name: str, value: Any) -> None:
        target = self._target(cls)
        allowed = PRESENTATION[cls]
        if (allowed is not None and name not in allowed) or not target.has_trait(name):
            settable = allowed or sorted(target.class_trait_names(config=True))
            raise ConfigError(
                f"%config {cls}.{name}: a cell may set {', '.join(settable)}"
                + (" (the others are the operator's)" if allowed else "")
            )
        try:
            setattr(target, name, value)
        except TraitError as exc:
            raise ConfigError(f"%config {cls}.{name}: {exc}") from None

    def _target(self, cls: str) -> Any:
        if cls == "SymbiKernel":
            return self.kernel
        if cls == "ResultDisplay":
            return self.kernel.display_options
        known = ", ".join(("SandboxOrchestrator", *PRESENTATION))
        raise ConfigError(f"%config: no {cls} in the symbi kernel; it has {known}")

    def _shown(self, cls: str) -> str:
        if cls == "SandboxOrchestrator":
            orchestrator = self.kernel.orchestrator
            lines = [
                f"SandboxOrchestrator.{name} = {getattr(orchestrator, name)!r}"
                + (
                    ""
                    if getattr(orchestrator, name) == self.operator[name]
                    else f"  (the operator's: {_say(self.operator[name])})"
                )
                for name in TIGHTENABLE
            ]
            lines.append("A cell may make these stricter; the operator's values bound them.")
        else:
            target = self._target(cls)
            names = PRESENTATION[cls] or sorted(target.class_trait_names(config=True))
            lines = [f"{cls}.{name} = {getattr(target, name)!r}" for name in names]
        return "\n".join(lines) + "\n"


def _stricter_or_equal(way: str, value: Any, operator: Any) -> bool:
    if way == "off":
        return value is False or value == operator
    if way == "on":
        return value is True or value == operator
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True  # the trait's own validation names the type it takes
    return value <= operator


def _above(asked: Any, ceiling: Any) -> bool:
    if ceiling is None:
        return False
    if isinstance(asked, bool):
        return asked and not ceiling
    return bool(asked > ceiling)


def _session_limits(kernel: KernelHost) -> ResourceLimits:
    return kernel.orchestrator.admit_limits(kernel.limits)


def _held(limits: ResourceLimits) -> tuple[Any, ...]:
    """The limits a worker holds from its start to its end."""
    return tuple(getattr(limits, field) for field in SESSION_LIMITS)


def _say(value: Any) -> str:
    return (
        number(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else repr(value)
    )
