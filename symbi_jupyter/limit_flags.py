"""The limit flags (``--max-memory``, ``--timeout``, ``--network`` ...), defined once
for ``%%symbi`` and the symbi kernel's ``%symbi_limits``.

:func:`limit_arguments` adds them to an IPython magic, as the shared argument
decorators of IPython's script magics do; :data:`LIMIT_ARGUMENTS` adds them to any
argparse parser; :func:`limits_from_args` turns what they parsed into limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from IPython.core.magic_arguments import argument

from .limits import ResourceLimits

F = TypeVar("F", bound=Callable[..., Any])

#: The flags, in the order ``--help`` and the usage line show them.
LIMIT_ARGUMENTS = (
    argument("--max-memory", type=float, metavar="MB", help="Memory limit in MB."),
    argument("--max-cpu", type=float, metavar="CORES", help="CPU cores (e.g. 2.0)."),
    argument("--max-cpu-seconds", type=float, metavar="S", help="CPU time limit in seconds."),
    argument("--timeout", type=float, metavar="S", help="Wall-clock limit in seconds."),
    argument("--max-processes", type=int, metavar="N", help="Process limit."),
    argument(
        "--max-disk",
        type=float,
        metavar="MB",
        help="What the run may write, in MB (its directory and /tmp).",
    ),
    argument(
        "--network",
        dest="network",
        action="store_true",
        default=None,
        help="Ask for network access (only if the policy allows it).",
    ),
    argument("--no-network", dest="network", action="store_false", help="No network."),
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
    # magic_arguments builds the parser from the bottom decorator up.
    for decorator in reversed(LIMIT_ARGUMENTS):
        func = decorator(func)
    return func


def add_limit_arguments(parser: Any) -> None:
    """Add the limit flags to an argparse parser."""
    for flag in LIMIT_ARGUMENTS:
        flag.add_to_parser(parser, None)


def limits_from_args(args: Any, base: ResourceLimits | None = None) -> ResourceLimits:
    """``base`` (by default no limits set) with the limits the flags in ``args`` set."""
    given = {field: getattr(args, dest) for dest, field in LIMIT_FIELDS.items()}
    base_fields = base.to_dict() if base is not None else {}
    return ResourceLimits(**{**base_fields, **{k: v for k, v in given.items() if v is not None}})
