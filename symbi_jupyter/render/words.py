"""Units and limits in words: durations, byte counts, what stopped a run and each
:class:`~symbi_jupyter.limits.ResourceLimits` field, shared by every renderer."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..limits import ResourceLimits, number

MIB = 1024 * 1024


class KillWords(NamedTuple):
    """How a ``killed_by`` reason reads: ``label`` in the text line, ``phrase`` in
    sentences, and the :class:`ResourceLimits` field holding its limit."""

    label: str
    phrase: str
    limit: str | None


#: ``ExecutionResult.killed_by`` -> how it reads; shared by every renderer.
KILL_REASON_WORDS: dict[str, KillWords] = {
    "timeout": KillWords("timeout", "the wall-clock timeout", "timeout_seconds"),
    "memory": KillWords("memory limit", "the memory limit", "max_memory_mb"),
    "cpu": KillWords("CPU-time limit", "the CPU-time limit", "max_cpu_seconds"),
    "processes": KillWords("process limit", "the process limit", "max_processes"),
    "file_size": KillWords("file-size limit", "the file-size limit", "max_file_size_mb"),
    "disk": KillWords("disk limit", "the disk limit", "max_disk_mb"),
    "output": KillWords("output limit", "the output limit", "max_output_bytes"),
    "signal": KillWords("signal", "a signal", None),
    "protocol": KillWords("protocol violation", "a protocol violation by the worker", None),
}

#: ``ExecutionResult.interrupted`` -> the status it gives; never "killed" where the
#: session and its state were kept.
INTERRUPT_WORDS: dict[str, str] = {
    "kept": "interrupted; state kept",
    "ended": "interrupted",
    "lost": "interrupted; it did not stop, so its session was stopped: state lost",
}


# -- units ---------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    """A duration in ms, s or min with three significant figures, e.g. ``31.2 ms``."""
    if seconds < 0.9995:
        return f"{_sig3(seconds * 1000)} ms"
    if seconds < 59.95:
        return f"{_sig3(seconds)} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def format_bytes(n: float) -> str:
    """A byte count in binary units with one decimal, e.g. ``9.8 MiB``."""
    if n < 1024:
        return f"{int(n)} B"
    value = n / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while round(value, 1) >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


def _sig3(value: float) -> str:
    if value <= 0:
        return "0"
    rounded = float(f"{value:.3g}")
    decimals = max(0, 2 - math.floor(math.log10(rounded)))
    return f"{rounded:.{decimals}f}"


# -- limits --------------------------------------------------------------------------
#: How each limit is said, by form (see :func:`say_limit`); ``{}`` is its number. The
#: ``_mb`` limits count MB as MiB (as cgroups and rlimits do): they read ``MiB``, the
#: unit of the figures measured against them (:func:`format_bytes`), so a limit and
#: its figure never carry two unit words for one size.
_LIMIT_WORDS: dict[str, tuple[str, str, str]] = {
    "max_memory_mb": ("{} MiB", "{} MiB memory", "memory {} MiB"),
    "max_cpu_seconds": ("{} s", "{} s CPU", "CPU {} s per cell"),
    "timeout_seconds": ("{} s", "{} s wall", "wall {} s per cell"),
    "max_cpu_cores": ("{}", "{} CPU core{s}", "{} cores"),
    "max_processes": ("{}", "{} processes", "{} processes"),
    "max_open_files": ("{}", "{} open files", "{} open files"),
    "max_file_size_mb": ("{} MiB", "file size {} MiB", "file size {} MiB"),
    "max_disk_mb": ("{} MiB", "disk {} MiB", "disk {} MiB"),
    "max_output_bytes": ("{}", "output {} per stream", "output {} per stream"),
    "network": ("{}", "network {on}", "{no}network"),
}
_LIMIT_FORMS = ("value", "phrase", "kernel")


def say_limit(field: str, value: Any, form: str = "phrase") -> str:
    """A limit (a :class:`ResourceLimits` field and its value) in words. ``form`` is
    ``"value"``, the value with its unit (``1024 MiB``); ``"phrase"``, as in a list of
    limits (``1024 MiB memory``); or ``"kernel"``, as the symbi kernel's magics say it
    (``memory 1024 MiB``)."""
    text = format_bytes(value) if field == "max_output_bytes" else number(value)
    return _LIMIT_WORDS[field][_LIMIT_FORMS.index(form)].format(
        text,
        s="" if value == 1 else "s",
        on="on" if value else "off",
        no="" if value else "no ",
    )


def limit_text(field: str, limits: ResourceLimits) -> str | None:
    """A limit's value with its unit, or None when it is unset."""
    value = getattr(limits, field, None)
    return None if value is None else say_limit(field, value, "value")


def limit_phrases(
    limits: ResourceLimits, fields: tuple[str, ...] = tuple(_LIMIT_WORDS)
) -> list[str]:
    """The set limits among ``fields`` (ResourceLimits field names), in words."""
    return [say_limit(f, getattr(limits, f)) for f in fields if getattr(limits, f) is not None]


def other_limits(limits: ResourceLimits) -> list[str]:
    """The limits that have no usage bar, in words."""
    return limit_phrases(
        limits,
        (
            "max_cpu_cores",
            "max_processes",
            "max_open_files",
            "max_file_size_mb",
            "max_disk_mb",
            "max_output_bytes",
            "network",
        ),
    )
