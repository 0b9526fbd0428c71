"""What a result says, shared by the renderers: its tier, its status, its notes
(truncation, other limits reached, limits not enforced) and its usage rows."""

from __future__ import annotations

import signal
from typing import NamedTuple

from ..limits import number
from ..result import ExecutionResult
from ..tiers import SecurityTier
from .options import ResultDisplay
from .words import (
    INTERRUPT_WORDS,
    KILL_REASON_WORDS,
    MIB,
    format_bytes,
    format_duration,
    limit_text,
)


# -- tier ----------------------------------------------------------------------------
def tier_of(result: ExecutionResult) -> SecurityTier | None:
    """The result's tier, or None when its ``tier`` names none."""
    try:
        return SecurityTier.parse(result.tier)
    except Exception:
        return None


def tier_label(result: ExecutionResult) -> str:
    """The result's tier in words, with its sandbox detail, and the cluster node it
    ran on where it ran on one."""
    tier = tier_of(result)
    label = str(result.tier) if tier is None else tier_words(tier, result.sandbox_detail)
    where = node_words(result)
    return f"{label} {where}" if where else label


def node_words(result: ExecutionResult) -> str | None:
    """'on node 10.0.0.7/3f9a2c1b' (the node id shortened), or None for a run on this
    host."""
    if not result.node:
        return None
    address, _, node_id = result.node.partition("/")
    return f"on node {address}/{node_id[:8]}" if node_id else f"on node {address}"


def tier_words(tier: SecurityTier, detail: str | None = None) -> str:
    """'Tier3 (QEMU microvm · emulated (TCG))', or with no detail 'Tier1 (docker)'."""
    return f"{tier.value} ({detail or tier.short_name})"


# -- status --------------------------------------------------------------------------
def _signal_text(number: int | None) -> str:
    if number is None:
        return "killed by a signal"
    try:
        return f"killed by signal {number} ({signal.Signals(number).name})"
    except ValueError:
        return f"killed by signal {number}"


def _stopped_limit(result: ExecutionResult) -> str | None:
    words = KILL_REASON_WORDS.get(result.killed_by or "")
    if words is None or words.limit is None:
        return None
    return limit_text(words.limit, result.limits)


def status_short(result: ExecutionResult) -> str:
    """The status for the text line: ``exit 0``, ``stopped: memory limit (1024 MiB)``."""
    return _status(result, sentence=False)


def status_words(result: ExecutionResult) -> str:
    """The status as a sentence, for HTML and markdown."""
    return _status(result, sentence=True)


def _status(result: ExecutionResult, *, sentence: bool) -> str:
    if result.error:
        return f"not run: {result.error}"
    if result.interrupted:
        # Whatever signal ended the process: the user's interrupt, and what it left.
        return INTERRUPT_WORDS.get(result.interrupted, "interrupted")
    reason = result.killed_by
    if reason == "signal" or (reason is None and result.term_signal is not None):
        return _signal_text(result.term_signal)
    if reason is None:
        return f"{'finished, ' if sentence else ''}exit {result.exit_code}"
    words = KILL_REASON_WORDS.get(reason)
    if words is None:
        return f"stopped: {reason}"
    limit = _stopped_limit(result)
    after = f" after {limit}" if limit else ""
    if not sentence:
        if reason == "timeout":
            return f"stopped: timeout{after} (partial output kept)"
        return f"stopped: {words.label} ({limit})" if limit else f"stopped: {words.label}"
    if reason == "timeout":
        return f"stopped by {words.phrase}{after}; partial output kept"
    if reason == "memory" and limit:
        return f"stopped by {words.phrase}: the code used more than {limit}"
    return f"stopped by {words.phrase} ({limit})" if limit else f"stopped by {words.phrase}"


def uneventful(result: ExecutionResult, short_seconds: float) -> bool:
    """Whether a result says nothing a one-line badge would leave out: it succeeded
    (exit 0, nothing stopped it), reached no limit, lost no output, and ran (wall
    clock) under ``short_seconds``. What is not enforced still is said, on that line."""
    wall = wall_seconds(result)
    return (
        result.success
        and result.term_signal is None
        and not result.limits_reached
        and truncation(result) is None
        and wall is not None
        and wall < short_seconds
    )


# -- notes ---------------------------------------------------------------------------
def truncation(result: ExecutionResult) -> str | None:
    """Which streams were cut short and at what size, or None."""
    streams = [
        name
        for name, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated))
        if cut
    ]
    if not streams:
        return None
    cap = result.limits.max_output_bytes
    at = f" at {format_bytes(cap)}" if cap is not None else ""
    return f"{' and '.join(streams)} truncated{at}"


def also_reached(result: ExecutionResult) -> list[str]:
    """Limits the run ran into besides the one that stopped it."""
    labels = []
    for reason in result.limits_reached:
        if reason == result.killed_by:
            continue
        words = KILL_REASON_WORDS.get(reason)
        label = words.label if words else reason
        if label not in labels:
            labels.append(label)
    return labels


def cautions(result: ExecutionResult, reached: str = "also reached") -> list[str]:
    """The truncation note and the other limits reached (``reached: a, b``), as set."""
    notes = []
    cut = truncation(result)
    if cut:
        notes.append(cut)
    others = also_reached(result)
    if others:
        notes.append(f"{reached}: " + ", ".join(others))
    return notes


def not_enforced(result: ExecutionResult) -> dict[str, str]:
    """Limit name -> why it was not enforced."""
    found = {}
    for name, how in result.enforcement.items():
        if isinstance(how, str) and how.startswith("not enforced"):
            why = how[len("not enforced") :].lstrip(" :;,-")
            found[name] = why
    return found


# -- usage ---------------------------------------------------------------------------
def wall_seconds(result: ExecutionResult) -> float | None:
    """The wall time, from the finer figure when there is one."""
    if result.wall_seconds:
        return result.wall_seconds
    if result.execution_time_ms:
        return result.execution_time_ms / 1000
    return None


class Usage(NamedTuple):
    """One usage row: a figure against its limit."""

    name: str
    used: str | None  # None in stable mode or when unknown
    limit: str | None  # None when unset or not shown
    fraction: float | None  # used / limit when both are known and shown
    stopped: bool  # this limit stopped the run
    method: str | None = None  # how the figure was measured
    samples: list[list[float]] | None = None  # memory over time, for the sparkline


def usage(result: ExecutionResult, shown: ResultDisplay) -> list[Usage]:
    """Memory, CPU time and wall time against their limits, as far as known and shown."""
    limits = result.limits
    memory_cap = limits.max_memory_mb * MIB if limits.max_memory_mb is not None else None
    rows = [
        ("memory", "memory", *peak(result), format_bytes, memory_cap),
        ("CPU time", "cpu", *cpu(result), format_duration, limits.max_cpu_seconds),
        (
            "wall time",
            "timeout",
            wall_seconds(result),
            None,
            format_duration,
            limits.timeout_seconds,
        ),
    ]
    found = []
    for name, reason, used, method, fmt, cap in rows:
        if not shown.show_limits:
            cap = None
        if shown.stable:
            used = None
        if used is None and cap is None:
            continue
        cap_text = None
        if cap is not None:
            cap_text = format_bytes(cap) if reason == "memory" else f"{number(cap)} s"
        found.append(
            Usage(
                name,
                fmt(used) if used is not None else None,
                cap_text,
                used / cap if used is not None and cap else None,
                result.killed_by == reason,
                method if used is not None else None,
                result.memory_samples if reason == "memory" and not shown.stable else None,
            )
        )
    return found


REPORTED = "reported by the sandbox"


def peak(result: ExecutionResult) -> tuple[float | None, str | None]:
    """The peak memory and how it was measured; the sandbox's own word only where the
    host measured none, and labelled so."""
    if result.peak_memory_bytes is not None:
        return result.peak_memory_bytes, result.memory_method
    reported = (result.sandbox_reported or {}).get("peak_memory_bytes")
    return (reported, REPORTED) if reported is not None else (None, None)


def cpu(result: ExecutionResult) -> tuple[float | None, str | None]:
    if result.cpu_seconds is not None:
        return result.cpu_seconds, None
    reported = result.sandbox_reported or {}
    if "cpu_user_seconds" in reported:
        return reported["cpu_user_seconds"] + reported.get("cpu_system_seconds", 0.0), REPORTED
    return None, None
