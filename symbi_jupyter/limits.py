"""Resource limits of one execution, and the ceiling rule that bounds them."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from .errors import ConfigError, PolicyViolation

# Field of ResourceLimits -> (SandboxOrchestrator trait that sets its ceiling, unit).
CEILING_TRAITS: dict[str, tuple[str, str]] = {
    "max_memory_mb": ("max_memory_mb", "MB"),
    "max_cpu_seconds": ("max_cpu_seconds", "s CPU"),
    "max_cpu_cores": ("max_cpu_cores", "cores"),
    "timeout_seconds": ("max_execution_time_seconds", "s"),
    "max_processes": ("max_processes", "processes"),
    "max_file_size_mb": ("max_file_size_mb", "MB"),
    "max_open_files": ("max_open_files", "files"),
    "max_output_bytes": ("max_output_bytes", "bytes"),
    "max_disk_mb": ("max_disk_mb", "MB"),
    "network": ("allow_network", ""),
}


@dataclasses.dataclass(frozen=True)
class ResourceLimits:
    """Limits for one execution. ``None`` means "the policy ceiling", except for
    ``network``, where it means no network: a request must ask for it.

    A request may lower any limit below the operator's ceiling, never raise it:
    see :meth:`within`.
    """

    max_memory_mb: float | None = None
    max_cpu_seconds: float | None = None
    max_cpu_cores: float | None = None
    timeout_seconds: float | None = None
    max_processes: int | None = None
    max_file_size_mb: float | None = None
    max_open_files: int | None = None
    max_output_bytes: int | None = None
    #: all the run may write: its directory, /tmp and the like (tmpfs sizes)
    max_disk_mb: float | None = None
    network: bool | None = None

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if field.name == "network":
                if not isinstance(value, bool):
                    raise ConfigError(f"network must be true or false, not {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{field.name} must be a number, not {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{field.name} must be a positive number, not {value!r}")

    def within(self, ceilings: ResourceLimits) -> ResourceLimits:
        """Fill unset limits from ``ceilings``; raise :class:`PolicyViolation` naming the
        ceiling and its trait when a limit asks for more than the ceiling allows."""
        effective: dict[str, Any] = {}
        for name, (trait, unit) in CEILING_TRAITS.items():
            asked, ceiling = getattr(self, name), getattr(ceilings, name)
            if asked is None:
                # The network is opt-in per request even where the policy allows it.
                effective[name] = False if name == "network" else ceiling
                continue
            if ceiling is not None and asked > ceiling:
                if name == "network":
                    raise PolicyViolation(
                        "network access was requested but the policy forbids it; an "
                        "operator can allow it with SandboxOrchestrator.allow_network = True"
                    )
                raise PolicyViolation(
                    f"{name}={number(asked)} {unit} exceeds the policy ceiling of "
                    f"{number(ceiling)} {unit}; ask for at most {number(ceiling)} or have the "
                    f"operator raise SandboxOrchestrator.{trait}"
                )
            effective[name] = asked
        return ResourceLimits(**effective)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def host_cores() -> int:
    """The CPUs this process may run on (its affinity, which a cpuset narrows), at
    least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def within_cores(
    limits: ResourceLimits, cores: int | None, host: str = "this host"
) -> tuple[ResourceLimits, str | None]:
    """``limits`` with ``max_cpu_cores`` lowered to ``cores``, what ``host`` (the
    machine that runs the sandbox) can give, and the note that says so for
    ``enforcement``; None where nothing was lowered (or ``cores`` is unknown)."""
    asked = limits.max_cpu_cores
    if not cores or not asked or asked <= cores:
        return limits, None
    lowered = dataclasses.replace(limits, max_cpu_cores=float(cores))
    unit = "core" if cores == 1 else "cores"
    return lowered, f"lowered from {number(asked)} to {cores} {unit}: {host} has {cores}"


def number(value: float | bool) -> str:
    """A configured number as written: ``2`` rather than ``2.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
