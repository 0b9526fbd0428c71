"""Renderings of agents (the summary card ``%%symbi_agent`` shows) and of emitted
values, as text and HTML.

The card shows the notebook directory's path only outside the stable rendering
(``ResultDisplay.stable``): it differs between checkouts, so notebooks that nbval
compares must not hold it.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from ..limits import ResourceLimits
from ..render import TIER_COLOURS, ResultDisplay, limit_phrases
from .grants import Permissions, Verdict, permissions
from .model import Agent

if TYPE_CHECKING:
    from .runner import Emitted

_OK, _NO = "✓", "✗"
_OK_COLOUR, _NO_COLOUR = "#2e7d32", "#c62828"


def _stable() -> bool:
    if not ResultDisplay.initialized():
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            # Take the shell's configuration (ipython_config.py, %config).
            return ResultDisplay.instance(parent=shell).stable
    return ResultDisplay.instance().stable


def limits_words(limits: ResourceLimits) -> list[str]:
    """The limits an agent's runs get, in words."""
    return limit_phrases(
        limits,
        (
            "max_memory_mb",
            "max_cpu_seconds",
            "timeout_seconds",
            "max_cpu_cores",
            "max_processes",
            "max_file_size_mb",
            "max_disk_mb",
            "max_output_bytes",
        ),
    )


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


class _Card:
    """What the card says, shared by the text and HTML renderings."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        # An unbound agent runs through the default orchestrator: its card says so.
        self.perms: Permissions = permissions(agent)
        self.policy_title = "policy" if agent.orchestrator else "policy (default orchestrator)"
        limits = self.perms.limits
        self.fields: list[tuple[str, str]] = []
        if agent.metadata:
            self.fields.append(
                (
                    "metadata",
                    " · ".join(f"{key}: {_value(value)}" for key, value in agent.metadata.items()),
                )
            )
        self.fields += [
            ("tier", agent.tier.display_name),
            ("sandbox", " · ".join([agent.sandbox.value, *limits_words(limits)])),
            ("capabilities", ", ".join(agent.capabilities) or "none"),
        ]
        if agent.directory and not _stable():
            self.fields.append(("directory", agent.directory))

    def policy(self) -> list[Verdict]:
        return [self.perms.tier, self.perms.filesystem, self.perms.network]

    def triggers(self) -> list[tuple[str, list[tuple[str, Verdict | None]]]]:
        """Trigger name -> (action excerpt, its verdict; None for an emit)."""
        verdicts: dict[int, Verdict] = {}
        for items in self.perms.actions.values():
            for run, verdict in items:
                verdicts[id(run)] = verdict
        out = []
        for name, trigger in self.agent.triggers.items():
            rows: list[tuple[str, Verdict | None]] = []
            for action in trigger.actions:
                rows.append((action.summary, verdicts.get(id(action))))
            out.append((name, rows))
        return out


def render_card_text(agent: Agent) -> str:
    """The agent's summary card as plain text."""
    card = _Card(agent)
    lines = [f"agent {agent.name}"]
    lines += [f"  {name:<13} {text}" for name, text in card.fields]
    triggers = card.triggers()
    if triggers:
        lines.append("  triggers")
        for name, rows in triggers:
            lines.append(f"    on {_value(name)}")
            for source, verdict in rows:
                if verdict is None:
                    lines.append(f"      · {source}")
                else:
                    mark = _OK if verdict.allowed else _NO
                    lines.append(f"      {mark} {source}: {verdict.reason}")
    lines.append(f"  {card.policy_title}")
    lines += [f"    {_OK if v.allowed else _NO} {v.subject}: {v.reason}" for v in card.policy()]
    return "\n".join(lines)


def render_card_html(agent: Agent) -> str:
    """The agent's summary card as self-contained HTML (inline CSS, no script)."""
    esc = html.escape
    card = _Card(agent)
    colour = TIER_COLOURS.get(agent.tier, "#616161")
    cell = 'style="padding:1px 8px;vertical-align:top;text-align:left"'
    head = 'style="padding:1px 8px;vertical-align:top;text-align:left;white-space:nowrap"'
    rows = [
        f"<tr><th {head}>{esc(name)}</th><td {cell}>{esc(text)}</td></tr>"
        for name, text in card.fields
    ]
    for name, actions in card.triggers():
        items = "".join(
            f"<div>{_mark_html(verdict)} <code>{esc(source)}</code>"
            + (f' <span style="opacity:.75">{esc(verdict.reason)}</span>' if verdict else "")
            + "</div>"
            for source, verdict in actions
        )
        rows.append(f"<tr><th {head}>on {esc(_value(name))}</th><td {cell}>{items}</td></tr>")
    items = "".join(
        f"<div>{_mark_html(v)} <b>{esc(v.subject)}</b>: {esc(v.reason)}</div>"
        for v in card.policy()
    )
    rows.append(f"<tr><th {head}>{esc(card.policy_title)}</th><td {cell}>{items}</td></tr>")
    return (
        f'<div class="symbi-agent" data-agent="{esc(agent.name)}" style="display:inline-block;'
        "font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;"
        f"border:1px solid rgba(127,127,127,.35);border-left:4px solid {colour};"
        'border-radius:4px;padding:4px 8px;margin:2px 0">'
        f'<div style="font-weight:600">agent {esc(agent.name)}</div>'
        f'<table style="border-collapse:collapse">{"".join(rows)}</table></div>'
    )


def _mark_html(verdict: Verdict | None) -> str:
    if verdict is None:
        return '<span style="opacity:.6">·</span>'
    if verdict.allowed:
        return f'<span style="color:{_OK_COLOUR}">{_OK}</span>'
    return f'<span style="color:{_NO_COLOUR}">{_NO}</span>'


def render_emitted_text(item: Emitted) -> str:
    """``[emit] AGENT.TRIGGER name = value`` with the value as JSON."""
    return f"[emit] {item.agent}.{item.trigger} {item.name} = {_value(item.value)}"


def render_emitted_html(item: Emitted) -> str:
    esc = html.escape
    return (
        '<div class="symbi-emit" style="font-family:system-ui,sans-serif;font-size:12px">'
        f'<span style="opacity:.75">emit {esc(item.agent)}.{esc(item.trigger)}</span> '
        f"<b>{esc(item.name)}</b> = <code>{esc(_value(item.value))}</code></div>"
    )
