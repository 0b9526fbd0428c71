"""Tables: the tier ladder (``%symbi_tiers``, ``doctor``) and several results side by
side (``compare``, ``%symbi_compare``)."""

from __future__ import annotations

import html
from typing import Any

from ..result import ExecutionResult
from ..tiers import SecurityTier
from .html_badge import TIER_COLOURS
from .options import ResultDisplay, display_options
from .summary import status_short, tier_label, tier_of
from .words import format_bytes, format_duration


class TierLadder:
    """The tier ladder None < Tier1 < Tier2 < Tier3 with this host's availability, as
    ``%symbi_tiers`` and ``symbi-jupyter doctor`` show it: the text in full (what
    ``doctor`` prints), the HTML as a table of one readable line per tier (the gist of
    a raw error, never the error itself) with the full text folded under it."""

    HEADER = ("tier", "state", "notes")
    #: details too long for the one line, kept for the full text
    FULL_ONLY = ("runtimes", "kernel", "rootfs")

    def __init__(self, availability: dict[SecurityTier, Any]) -> None:
        self.availability = availability

    def rows(self) -> list[tuple[SecurityTier, bool, str]]:
        """(tier, ready, the full note) per tier."""
        return [
            (tier, bool(av.ok), av.reason if not av.ok else _details(av.details))
            for tier, av in sorted(self.availability.items())
        ]

    def gists(self) -> dict[SecurityTier, str]:
        """One readable line per tier: the reason it is unavailable, or what it runs on."""
        found = {}
        for tier, av in sorted(self.availability.items()):
            if not av.ok:
                found[tier] = gist(av.reason)
            else:
                found[tier] = " · ".join(
                    f"{key}: {gist(str(value), first_clause=True)}"
                    for key, value in av.details.items()
                    if key not in self.FULL_ONLY
                )
        return found

    def __str__(self) -> str:
        rows = [
            (t.display_name, "ready" if ok else "unavailable", note) for t, ok, note in self.rows()
        ]
        width = [max(len(r[i]) for r in [self.HEADER, *rows]) for i in (0, 1)]
        indent = " " * (width[0] + width[1] + 2)
        lines = []
        for name, state, note in [self.HEADER, *rows]:
            first, *rest = note.splitlines() or [""]
            lines.append(f"{name:<{width[0]}} {state:<{width[1]}} {first}".rstrip())
            lines += [f"{indent}{more}".rstrip() for more in rest]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        esc = html.escape
        gists = self.gists()
        head = "".join(f"<th {_CELL}>{name}</th>" for name in self.HEADER)
        cells = []
        for tier, ok, note in self.rows():
            state = "&#10003; ready" if ok else "&#10007; unavailable"
            line = esc(gists[tier])
            if note.strip() != gists[tier]:
                line += (
                    '<details><summary style="opacity:0.75">details</summary>'
                    f'<pre style="white-space:pre-wrap;margin:0">{esc(note)}</pre></details>'
                )
            cells.append(
                f"<tr><td {_CELL[:-1]};border-left:4px solid {TIER_COLOURS[tier]};"
                f'white-space:nowrap"><b>{esc(tier.display_name)}</b></td>'
                f'<td {_CELL[:-1]};white-space:nowrap">{state}</td><td {_CELL}>{line}</td></tr>'
            )
        return (
            '<table class="symbi-tiers" style="border-collapse:collapse;font-size:90%">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>"
        )


#: JupyterLab right-aligns table cells: ours are left-aligned, at the top.
_CELL = 'style="text-align:left;vertical-align:top;padding:2px 8px"'


def gist(text: str, first_clause: bool = False) -> str:
    """The readable head of a message: its first line, without the raw errors it
    quotes (a parenthesis holding a ``:``, such as a VMM's own assertion, or one that
    the line break cut open), and with ``first_clause``, only what comes before its
    first ``;``."""
    lines = text.strip().splitlines()
    line = lines[0] if lines else ""
    kept, group, depth = [], [], 0
    for ch in line:
        if ch == "(":
            depth += 1
        if depth:
            group.append(ch)
        else:
            kept.append(ch)
        if ch == ")" and depth:
            depth -= 1
            if not depth:
                if ":" not in group:  # an aside of ours, "(TCG)", stays
                    kept += group
                group = []
    line = "".join(kept)  # an unclosed group (cut by the line break) is left out
    if first_clause:
        line = line.split("; ")[0]
    return " ".join(line.split()).rstrip(":;, ")


def _details(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in details.items())


def _tier_colour(result: ExecutionResult) -> str:
    tier = tier_of(result)
    return "#999" if tier is None else TIER_COLOURS.get(tier, "#999")


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
        stable = display_options(self.display).stable
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
            return tier_label(r)
        if name == "status":
            return status_short(r)
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
            f'<th style="text-align:left;padding:2px 10px;border-bottom:2px solid '
            f'{_tier_colour(r)}">{html.escape(label)}</th>'
            for label, r in zip(self.labels, self.results, strict=True)
        )
        body = "".join(
            f'<tr><th style="text-align:left;padding:2px 10px">{html.escape(name)}</th>'
            + "".join(
                f'<td style="text-align:left;padding:2px 10px">{html.escape(v)}</td>'
                for v in values
            )
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
