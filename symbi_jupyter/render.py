"""Renderings of an :class:`~symbi_jupyter.result.ExecutionResult`: one text line, an
HTML badge, markdown and a MIME bundle.

Rendering is separate from execution. :class:`ResultDisplay` holds the display
options; its ``stable`` trait leaves out every figure that changes from run to run
(wall time, CPU time, peak memory, usage bars), so notebooks tested with nbval
compare equal between runs.
"""

from __future__ import annotations

import html
import math
import os
import signal
import threading
from typing import Any, NamedTuple

from traitlets import Bool, default
from traitlets.config import SingletonConfigurable

from .limits import ResourceLimits, number
from .result import ExecutionResult
from .tiers import SecurityTier

__all__ = [
    "KILL_REASON_WORDS",
    "MIME_TYPE",
    "TIER_COLOURS",
    "VOLATILE_FIELDS",
    "Comparison",
    "KillWords",
    "LiveLine",
    "ResultDisplay",
    "TierLadder",
    "compare",
    "format_bytes",
    "format_duration",
    "limit_phrases",
    "render_html",
    "render_markdown",
    "render_mimebundle",
    "render_text",
    "say_limit",
]

MIME_TYPE = "application/vnd.symbi.result+json"

#: ExecutionResult fields that change from run to run, left out of stable renderings.
VOLATILE_FIELDS = (
    "execution_time_ms",
    "wall_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "peak_memory_bytes",
    "workdir",
    "stdout_bytes",  # output that names its run directory varies in length
    "stderr_bytes",
    "startup_seconds",
    "memory_samples",
)

_TRUE_WORDS = ("1", "true", "yes")
_MIB = 1024 * 1024


class ResultDisplay(SingletonConfigurable):
    """How execution results are displayed.

    Set options with ``%config ResultDisplay.stable = True`` or in a config file as
    ``c.ResultDisplay.stable = True``.
    """

    stable = Bool(
        help="""Stable rendering: leave out every figure that varies between runs (wall
        time, CPU time, peak memory, the numbers and widths of usage bars), so notebooks
        compare equal under nbval. Tier, exit status, what stopped the run,
        truncation, limits and "not enforced" warnings are still shown. Defaults to
        True when the environment variable SYMBI_JUPYTER_STABLE_OUTPUT is 1, true or
        yes.""",
    ).tag(config=True)

    show_limits = Bool(
        True,
        help="""Show the effective resource limits next to the usage figures, and
        usage-versus-limit bars in HTML.""",
    ).tag(config=True)

    @default("stable")
    def _stable_default(self) -> bool:
        value = os.environ.get("SYMBI_JUPYTER_STABLE_OUTPUT", "")
        return value.strip().lower() in _TRUE_WORDS


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
    "output": KillWords("output limit", "the output limit", "max_output_bytes"),
    "signal": KillWords("signal", "a signal", None),
}

TIER_COLOURS = {
    SecurityTier.NONE: "#c62828",
    SecurityTier.TIER1: "#1565c0",
    SecurityTier.TIER2: "#6a1b9a",
    SecurityTier.TIER3: "#2e7d32",
}
_TIER_BADGE = {
    SecurityTier.NONE: "no isolation",
    SecurityTier.TIER1: "Docker",
    SecurityTier.TIER2: "gVisor",
    SecurityTier.TIER3: "microVM",
}
_BAR_COLOUR = "#607d8b"
_WARN_COLOUR = "#b26a00"
_STOP_COLOUR = "#c62828"


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


#: How each limit is said, by form (see :func:`say_limit`); ``{}`` is its number.
_LIMIT_WORDS: dict[str, tuple[str, str, str]] = {
    "max_memory_mb": ("{} MB", "{} MB memory", "memory {} MB"),
    "max_cpu_seconds": ("{} s", "{} s CPU", "CPU {} s per cell"),
    "timeout_seconds": ("{} s", "{} s wall", "wall {} s per cell"),
    "max_cpu_cores": ("{}", "{} CPU core{s}", "{} cores"),
    "max_processes": ("{}", "{} processes", "{} processes"),
    "max_open_files": ("{}", "{} open files", "{} open files"),
    "max_file_size_mb": ("{} MB", "file size {} MB", "file size {} MB"),
    "max_output_bytes": ("{}", "output {} per stream", "output {} per stream"),
    "network": ("{}", "network {on}", "{no}network"),
}
_LIMIT_FORMS = ("value", "phrase", "kernel")


def say_limit(field: str, value: Any, form: str = "phrase") -> str:
    """A limit (a :class:`ResourceLimits` field and its value) in words. ``form`` is
    ``"value"``, the value with its unit (``1024 MB``); ``"phrase"``, as in a list of
    limits (``1024 MB memory``); or ``"kernel"``, as the symbi kernel's magics say it
    (``memory 1024 MB``)."""
    text = format_bytes(value) if field == "max_output_bytes" else number(value)
    return _LIMIT_WORDS[field][_LIMIT_FORMS.index(form)].format(
        text,
        s="" if value == 1 else "s",
        on="on" if value else "off",
        no="" if value else "no ",
    )


def _limit_text(field: str, limits: ResourceLimits) -> str | None:
    """A limit's value with its unit, or None when it is unset."""
    value = getattr(limits, field, None)
    return None if value is None else say_limit(field, value, "value")


def limit_phrases(
    limits: ResourceLimits, fields: tuple[str, ...] = tuple(_LIMIT_WORDS)
) -> list[str]:
    """The set limits among ``fields`` (ResourceLimits field names), in words."""
    return [say_limit(f, getattr(limits, f)) for f in fields if getattr(limits, f) is not None]


def _other_limits(limits: ResourceLimits) -> list[str]:
    """The limits that have no usage bar, in words."""
    return limit_phrases(
        limits,
        (
            "max_cpu_cores",
            "max_processes",
            "max_open_files",
            "max_file_size_mb",
            "max_output_bytes",
            "network",
        ),
    )


# -- what the result says, shared by the renderers -------------------------------------
def _display(display: ResultDisplay | None) -> ResultDisplay:
    if display is not None:
        return display
    if not ResultDisplay.initialized():
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            # Take the shell's configuration (ipython_config.py, %config).
            return ResultDisplay.instance(parent=shell)
    return ResultDisplay.instance()


def _tier(result: ExecutionResult) -> SecurityTier | None:
    try:
        return SecurityTier.parse(result.tier)
    except Exception:
        return None


def _tier_label(result: ExecutionResult) -> str:
    tier = _tier(result)
    if tier is None:
        return str(result.tier)
    return _tier_words(tier, result.sandbox_detail)


def _tier_words(tier: SecurityTier, detail: str | None = None) -> str:
    """'Tier3 (QEMU microvm · emulated (TCG))', or with no detail 'Tier1 (docker)'."""
    return f"{tier.value} ({detail or tier.short_name})"


def _tier_pill_html(tier: SecurityTier | None, label: str, detail: str | None = None) -> str:
    """The coloured tier label at the head of a badge."""
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    text = f"{tier.value} · {detail or _TIER_BADGE[tier]}" if tier else label
    return (
        f'<span style="background:{colour};color:#fff;border-radius:3px;padding:0 6px;'
        f'font-weight:600">{html.escape(text)}</span>'
    )


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
    return _limit_text(words.limit, result.limits)


def _status_short(result: ExecutionResult) -> str:
    """The status for the text line: ``exit 0``, ``stopped: memory limit (1024 MB)``."""
    return _status(result, sentence=False)


def _status_words(result: ExecutionResult) -> str:
    """The status as a sentence, for HTML and markdown."""
    return _status(result, sentence=True)


def _status(result: ExecutionResult, *, sentence: bool) -> str:
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


def _truncation(result: ExecutionResult) -> str | None:
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


def _also_reached(result: ExecutionResult) -> list[str]:
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


def _not_enforced(result: ExecutionResult) -> dict[str, str]:
    """Limit name -> why it was not enforced."""
    found = {}
    for name, how in result.enforcement.items():
        if isinstance(how, str) and how.startswith("not enforced"):
            why = how[len("not enforced") :].lstrip(" :;,-")
            found[name] = why
    return found


def _wall_seconds(result: ExecutionResult) -> float | None:
    if result.wall_seconds:
        return result.wall_seconds
    if result.execution_time_ms:
        return result.execution_time_ms / 1000
    return None


class _Usage(NamedTuple):
    name: str
    used: str | None  # None in stable mode or when unknown
    limit: str | None  # None when unset or not shown
    fraction: float | None  # used / limit when both are known and shown
    stopped: bool  # this limit stopped the run
    method: str | None = None  # how the figure was measured
    samples: list[list[float]] | None = None  # memory over time, for the sparkline


def _usage(result: ExecutionResult, shown: ResultDisplay) -> list[_Usage]:
    """Memory, CPU time and wall time against their limits, as far as known and shown."""
    limits = result.limits
    memory_cap = limits.max_memory_mb * _MIB if limits.max_memory_mb is not None else None
    rows = [
        ("memory", "memory", result.peak_memory_bytes, format_bytes, memory_cap),
        ("CPU time", "cpu", result.cpu_seconds, format_duration, limits.max_cpu_seconds),
        ("wall time", "timeout", _wall_seconds(result), format_duration, limits.timeout_seconds),
    ]
    usage = []
    for name, reason, used, fmt, cap in rows:
        if not shown.show_limits:
            cap = None
        if shown.stable:
            used = None
        if used is None and cap is None:
            continue
        cap_text = None
        if cap is not None:
            cap_text = format_bytes(cap) if reason == "memory" else f"{number(cap)} s"
        usage.append(
            _Usage(
                name,
                fmt(used) if used is not None else None,
                cap_text,
                used / cap if used is not None and cap else None,
                result.killed_by == reason,
                result.memory_method if reason == "memory" and used is not None else None,
                result.memory_samples if reason == "memory" and not shown.stable else None,
            )
        )
    return usage


# -- text --------------------------------------------------------------------------
def render_text(result: ExecutionResult, display: ResultDisplay | None = None) -> str:
    """One line in the manner of ``%%timeit``, e.g.
    ``[symbi] None (native) · exit 0 · wall 31.2 ms · CPU 24.0 ms · peak 9.8 MiB``."""
    shown = _display(display)
    parts = [f"[symbi] {_tier_label(result)}", _status_short(result)]
    if not shown.stable:
        wall = _wall_seconds(result)
        if wall is not None:
            parts.append(f"wall {format_duration(wall)}")
        if result.cpu_seconds is not None:
            parts.append(f"CPU {format_duration(result.cpu_seconds)}")
        if result.peak_memory_bytes is not None:
            peak = f"peak {format_bytes(result.peak_memory_bytes)}"
            if shown.show_limits and result.limits.max_memory_mb is not None:
                peak += f" of {format_bytes(result.limits.max_memory_mb * _MIB)}"
            if result.memory_method:
                peak += f" ({result.memory_method})"
            parts.append(peak)
    truncation = _truncation(result)
    if truncation:
        parts.append(truncation)
    reached = _also_reached(result)
    if reached:
        parts.append("reached: " + ", ".join(reached))
    missing = _not_enforced(result)
    if missing:
        parts.append("not enforced: " + ", ".join(missing))
    return " · ".join(parts)


# -- HTML --------------------------------------------------------------------------
def render_html(result: ExecutionResult, display: ResultDisplay | None = None) -> str:
    """A self-contained badge: tier, status, usage-versus-limit bars and warnings.

    Inline CSS only; no script and no external resource.
    """
    shown = _display(display)
    esc = html.escape
    tier = _tier(result)
    colour = TIER_COLOURS.get(tier, "#616161") if tier else "#616161"
    tier_value = tier.value if tier else str(result.tier)
    status_colour = "inherit" if result.success else _STOP_COLOUR

    out = [
        f'<div class="symbi-result" data-tier="{esc(tier_value)}" style="display:inline-block;'
        f"font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;"
        f"line-height:1.5;border:1px solid rgba(127,127,127,.35);border-left:4px solid {colour};"
        f'border-radius:4px;padding:4px 8px;margin:2px 0;min-width:24em">',
        '<div style="display:flex;align-items:center;gap:8px;flex-wrap:wrap">',
        _tier_pill_html(tier, tier_value, result.sandbox_detail),
        f'<span style="color:{status_colour};font-weight:600">{esc(_status_words(result))}</span>',
        "</div>",
    ]
    for row in _usage(result, shown):
        out.append(_html_usage_row(row))
    if shown.show_limits:
        others = _other_limits(result.limits)
        if others:
            out.append('<div style="opacity:.75">limits: ' + esc(" · ".join(others)) + "</div>")
    notes = []
    truncation = _truncation(result)
    if truncation:
        notes.append(truncation)
    reached = _also_reached(result)
    if reached:
        notes.append("also reached: " + ", ".join(reached))
    for note in notes:
        out.append(f'<div style="color:{_WARN_COLOUR}">{esc(note)}</div>')
    for name, why in _not_enforced(result).items():
        text = f"not enforced: {name}" + (f" ({why})" if why else "")
        out.append(f'<div style="color:{_WARN_COLOUR}">⚠ {esc(text)}</div>')
    out.append("</div>")
    return "".join(out)


def _html_usage_row(row: _Usage) -> str:
    esc = html.escape
    if row.used is not None and row.limit is not None:
        figures = f"{row.used} of {row.limit}"
    elif row.used is not None:
        figures = row.used
    else:
        figures = f"limit {row.limit}"
    if row.method:
        figures += f" ({row.method})"
    parts = [
        f'<div class="symbi-usage" data-usage="{esc(row.name)}" '
        'style="display:flex;align-items:center;gap:8px">',
        f'<span style="width:6em;opacity:.75">{esc(row.name)}</span>',
    ]
    if row.fraction is not None:
        percent = min(100.0, max(0.0, row.fraction * 100))
        fill = _BAR_COLOUR
        if row.stopped or row.fraction >= 1:
            fill = _STOP_COLOUR
        elif row.fraction >= 0.8:
            fill = _WARN_COLOUR
        parts.append(
            '<div class="symbi-bar" style="width:10em;height:8px;'
            'background:rgba(127,127,127,.25);border-radius:4px;overflow:hidden">'
            f'<div class="symbi-bar-fill" style="width:{percent:.1f}%;height:100%;'
            f'background:{fill}"></div></div>'
        )
    parts.append(f"<span>{esc(figures)}</span>")
    if row.samples:
        parts.append(sparkline_svg(row.samples))
    parts.append("</div>")
    return "".join(parts)


def sparkline_svg(points: list[list[float]], width: int = 96, height: int = 18) -> str:
    """Memory over time as an inline SVG polyline (no script), scaled to the run's
    own range so its shape shows; the figures beside it give the scale."""
    t_end = max(p[0] for p in points) or 1.0
    top = max(p[1] for p in points) or 1
    coords = " ".join(
        f"{1 + (width - 2) * p[0] / t_end:.1f},{height - 1 - (height - 2) * p[1] / top:.1f}"
        for p in points
    )
    title = (
        f"memory over {format_duration(t_end)}: {len(points)} samples, highest {format_bytes(top)}"
    )
    return (
        f'<svg class="symbi-sparkline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">'
        f"<title>{html.escape(title)}</title>"
        f'<polyline points="{coords}" fill="none" stroke="{_BAR_COLOUR}" '
        'stroke-width="1.5" stroke-linejoin="round"/></svg>'
    )


# -- markdown ----------------------------------------------------------------------
_MD_SPECIAL = "\\`*_[]|~#"


def _md(text: str) -> str:
    """Escape text for markdown, HTML included (front ends render HTML in markdown)."""
    text = html.escape(text, quote=False)
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def render_markdown(result: ExecutionResult, display: ResultDisplay | None = None) -> str:
    """Bold status, then a small table of usage and limits, then notes."""
    shown = _display(display)
    lines = [f"**\\[symbi\\] {_md(_tier_label(result))}: {_md(_status_words(result))}**"]
    usage = _usage(result, shown)
    columns = [
        (title, key)
        for title, key in (("used", "used"), ("limit", "limit"))
        if any(getattr(row, key) is not None for row in usage)
    ]
    if usage and columns:
        lines += [
            "",
            "| | " + " | ".join(title for title, _ in columns) + " |",
            "|:--|" + "--:|" * len(columns),
        ]
        for row in usage:
            cells = [getattr(row, key) or "" for _, key in columns]
            if row.method:  # set only with a used figure, the first column
                cells[0] += f" ({row.method})"
            cells = [_md(cell) for cell in cells]
            lines.append(f"| {_md(row.name)} | " + " | ".join(cells) + " |")
    notes = []
    if shown.show_limits:
        others = _other_limits(result.limits)
        if others:
            notes.append("limits: " + " · ".join(others))
    truncation = _truncation(result)
    if truncation:
        notes.append(truncation)
    reached = _also_reached(result)
    if reached:
        notes.append("also reached: " + ", ".join(reached))
    for name, why in _not_enforced(result).items():
        notes.append(f"⚠ not enforced: {name}" + (f" ({why})" if why else ""))
    if notes:
        lines.append("")
        lines += [f"- {_md(note)}" for note in notes]
    return "\n".join(lines) + "\n"


# -- bundle ------------------------------------------------------------------------
def render_mimebundle(
    result: ExecutionResult, display: ResultDisplay | None = None
) -> dict[str, Any]:
    """Every rendering by MIME type, plus the raw figures as
    ``application/vnd.symbi.result+json``.

    The JSON holds figures, not the output itself: stdout and stderr are already in
    the notebook as streams, and a second copy of up to ``max_output_bytes`` each would
    bloat it. nbval compares every MIME type, so in stable mode the JSON leaves the
    volatile figures out too (``null``); the ``ExecutionResult`` itself keeps them all.
    """
    shown = _display(display)
    data = result.to_dict()
    del data["stdout"], data["stderr"]
    if shown.stable:
        data.update(dict.fromkeys(VOLATILE_FIELDS))
    return {
        "text/plain": render_text(result, shown),
        "text/html": render_html(result, shown),
        "text/markdown": render_markdown(result, shown),
        MIME_TYPE: data,
    }


class LiveLine:
    """What ``%%symbi`` shows while a cell runs (elapsed time, memory now, CPU %),
    updated in place and then replaced by the final statistics."""

    def __init__(self, tier: SecurityTier, limits: ResourceLimits, sample: Any) -> None:
        self.tier, self.limits, self.sample = tier, limits, sample

    def _parts(self) -> list[str]:
        s = self.sample
        parts = [f"running {format_duration(s.elapsed_seconds)}"]
        if s.memory_bytes is not None:
            memory = f"memory {format_bytes(s.memory_bytes)}"
            if self.limits.max_memory_mb:
                memory += f" of {format_bytes(self.limits.max_memory_mb * _MIB)}"
            parts.append(memory)
        if s.cpu_percent is not None:
            parts.append(f"CPU {s.cpu_percent:.0f} %")
        return parts

    def __str__(self) -> str:
        return " · ".join([f"[symbi] {_tier_words(self.tier)}", *self._parts()])

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        colour = TIER_COLOURS.get(self.tier, "#616161")
        return (
            f'<div class="symbi-live" data-tier="{html.escape(self.tier.value)}" '
            "style=\"display:inline-block;font-family:system-ui,-apple-system,'Segoe UI',"
            f'sans-serif;font-size:12px;border-left:4px solid {colour};padding:2px 8px">'
            f"{_tier_pill_html(self.tier, self.tier.value)} "
            f"{html.escape(' · '.join(self._parts()))}</div>"
        )


class LiveUpdates:
    """Shows a :class:`LiveLine` from usage samples (called from the sampling thread):
    the first sample displays it, later ones update it in place at most every
    ``MIN_UPDATE_SECONDS``, none after :meth:`close`. A front end says how to show
    it (:meth:`_show`): ``%%symbi`` through IPython's display, the symbi kernel
    through its own messages."""

    #: Seconds between display updates, so a front end is not flooded.
    MIN_UPDATE_SECONDS = 0.5

    def __init__(self, tier: SecurityTier, limits: ResourceLimits) -> None:
        self.tier, self.limits = tier, limits
        self.shown = False
        self.closed = False
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, sample: Any) -> None:
        with self._lock:
            if self.closed:
                return
            if self.shown and sample.elapsed_seconds - self._last < self.MIN_UPDATE_SECONDS:
                return
            self._last = sample.elapsed_seconds
            self._show(LiveLine(self.tier, self.limits, sample), first=not self.shown)
            self.shown = True

    def close(self) -> bool:
        """No more updates; whether the line was ever shown."""
        with self._lock:
            self.closed = True
            return self.shown

    def _show(self, line: LiveLine, first: bool) -> None:
        raise NotImplementedError


class TierLadder:
    """The tier ladder None < Tier1 < Tier2 < Tier3 with this host's availability, as
    ``%symbi_tiers`` and ``symbi-jupyter doctor`` show it."""

    def __init__(self, availability: dict[SecurityTier, Any]) -> None:
        self.availability = availability

    def rows(self) -> list[tuple[SecurityTier, bool, str]]:
        return [
            (tier, bool(av.ok), av.reason if not av.ok else _details(av.details))
            for tier, av in sorted(self.availability.items())
        ]

    def __str__(self) -> str:
        lines = []
        for tier, ok, note in self.rows():
            mark = "ready" if ok else "unavailable"
            lines.append(f"{tier.display_name:<28} {mark:<11} {note}".rstrip())
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        cells = []
        for tier, ok, note in self.rows():
            colour = TIER_COLOURS[tier]
            state = "&#10003; ready" if ok else "&#10007; unavailable"
            cells.append(
                f'<tr><td style="border-left:4px solid {colour};padding:2px 8px">'
                f"<b>{html.escape(tier.display_name)}</b></td>"
                f'<td style="padding:2px 8px">{state}</td>'
                f'<td style="padding:2px 8px">{html.escape(note)}</td></tr>'
            )
        return (
            '<table class="symbi-tiers" style="border-collapse:collapse;font-size:90%">'
            + "".join(cells)
            + "</table>"
        )


def _details(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in details.items())


class Comparison:
    """Several results side by side, one column each: ``symbi_jupyter.compare`` and
    ``%symbi_compare``. The stable rendering leaves the volatile rows blank."""

    ROWS = ("tier", "status", "wall", "CPU", "peak memory", "start-up")

    def __init__(
        self,
        results: list[ExecutionResult],
        labels: list[str] | None = None,
        display: ResultDisplay | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(results):
            raise ValueError(f"{len(labels)} labels for {len(results)} results")
        self.results = list(results)
        self.labels = list(labels) if labels else [f"#{i + 1}" for i in range(len(results))]
        self.display = display

    def cells(self) -> list[tuple[str, list[str]]]:
        stable = _display(self.display).stable
        rows: list[tuple[str, list[str]]] = []
        for name in self.ROWS:
            values = []
            for r in self.results:
                values.append(
                    "" if stable and name not in ("tier", "status") else self._value(name, r)
                )
            rows.append((name, values))
        return rows

    @staticmethod
    def _value(name: str, r: ExecutionResult) -> str:
        if name == "tier":
            return _tier_label(r)
        if name == "status":
            return _status_short(r)
        if name == "wall":
            return format_duration(r.wall_seconds)
        if name == "CPU":
            return format_duration(r.cpu_seconds) if r.cpu_seconds is not None else "?"
        if name == "peak memory":
            if r.peak_memory_bytes is None:
                return "?"
            return f"{format_bytes(r.peak_memory_bytes)} ({r.memory_method})"
        return format_duration(r.startup_seconds) if r.startup_seconds is not None else "-"

    def __str__(self) -> str:
        rows = [("", self.labels), *self.cells()]
        widths = [max(len(row[0]) for row in rows)]
        for i in range(len(self.results)):
            widths.append(max(len(row[1][i]) for row in rows))
        lines = []
        for name, values in rows:
            padded = [v.ljust(w) for v, w in zip(values, widths[1:], strict=True)]
            cells = [name.ljust(widths[0]), *padded]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        head = "".join(
            f'<th style="padding:2px 10px;border-bottom:2px solid '
            f'{TIER_COLOURS.get(_tier(r), "#999")}">{html.escape(label)}</th>'
            for label, r in zip(self.labels, self.results, strict=True)
        )
        body = "".join(
            f'<tr><th style="text-align:left;padding:2px 10px">{html.escape(name)}</th>'
            + "".join(f'<td style="padding:2px 10px">{html.escape(v)}</td>' for v in values)
            + "</tr>"
            for name, values in self.cells()
        )
        return (
            '<table class="symbi-compare" style="border-collapse:collapse;font-size:90%">'
            f"<tr><th></th>{head}</tr>{body}</table>"
        )


def compare(results: list[ExecutionResult], labels: list[str] | None = None) -> Comparison:
    """A side-by-side table of several results (tier, status, wall, CPU, peak memory,
    start-up), for notebooks and agents comparing tiers."""
    return Comparison(results, labels)
