"""The limit flags (``--max-memory``, ``--timeout``, ``--network`` ...), defined once
for ``%%symbi``, ``%symbi_trigger``, the symbi kernel's ``%symbi_limits`` and
``symbi-jupyter run``.

:data:`LIMIT_FLAGS` holds them as plain ``add_argument`` calls: :func:`limit_arguments`
adds them to an IPython magic, as the shared argument decorators of IPython's script
magics do; :func:`add_limit_arguments` to any argparse parser (the command line needs
no IPython for it); :func:`limits_from_args` turns what they parsed into limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .limits import ResourceLimits

F = TypeVar("F", bound=Callable[..., Any])

#: The flags as (option strings, add_argument keywords), in the order ``--help`` and
#: the usage line show them.
LIMIT_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--max-memory",), {"type": float, "metavar": "MB", "help": "Memory limit in MB."}),
    (("--max-cpu",), {"type": float, "metavar": "CORES", "help": "CPU cores (e.g. 2.0)."}),
    (
        ("--max-cpu-seconds",),
        {"type": float, "metavar": "S", "help": "CPU time limit in seconds."},
    ),
    (("--timeout",), {"type": float, "metavar": "S", "help": "Wall-clock limit in seconds."}),
    (("--max-processes",), {"type": int, "metavar": "N", "help": "Process limit."}),
    (
        ("--max-disk",),
        {
            "type": float,
            "metavar": "MB",
            "help": "What the run may write, in MB (its directory and /tmp).",
        },
    ),
    (
        ("--network",),
        {
            "dest": "network",
            "action": "store_true",
            "default": None,
            "help": "Ask for network access (only if the policy allows it).",
        },
    ),
    (("--no-network",), {"dest": "network", "action": "store_false", "help": "No network."}),
)

#: Each flag's parsed name -> the ResourceLimits field it sets.
LIMIT_FIELDS = {
    "max_memory": "max_memory_mb",
    "max_cpu": "max_cpu_cores",
    "max_cpu_seconds": "max_cpu_seconds",
    "timeout": "timeout_seconds",
    "max_processes": "max_processes",
    "max_disk": "max_disk_mb",
    "network": "network",
}


def limit_arguments(func: F) -> F:
    """Add the limit flags to a magic, where this decorator stands among its
    ``@argument`` decorators."""
    from IPython.core.magic_arguments import argument

    # magic_arguments builds the parser from the bottom decorator up.
    for names, keywords in reversed(LIMIT_FLAGS):
        func = argument(*names, **keywords)(func)
    return func


def add_limit_arguments(parser: Any) -> None:
    """Add the limit flags to an argparse parser (or argument group)."""
    for names, keywords in LIMIT_FLAGS:
        parser.add_argument(*names, **keywords)


def limits_from_args(args: Any, base: ResourceLimits | None = None) -> ResourceLimits:
    """``base`` (by default no limits set) with the limits the flags in ``args`` set."""
    given = {field: getattr(args, dest) for dest, field in LIMIT_FIELDS.items()}
    base_fields = base.to_dict() if base is not None else {}
    return ResourceLimits(**{**base_fields, **{k: v for k, v in given.items() if v is not None}})
