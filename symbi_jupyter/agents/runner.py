"""Running a trigger: each action through ``orchestrator.execute_code`` at the agent's
tier, under its sandbox mode's limits and the capabilities the policy lets it have."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from .. import policy
from ..errors import ConfigError, PolicyViolation, TierUnavailable
from ..limits import ResourceLimits
from ..result import ExecutionResult
from ..tiers import SecurityTier
from .grants import (
    CONTAINER_NOTEBOOK_DIR,
    Permissions,
    mount_refusal,
    notebook_directory,
    permissions,
    volume_spec,
)
from .model import Agent, Emit, Ref, Run

#: The trigger's payload, as JSON.
PAYLOAD_ENV = "SYMBI_PAYLOAD"
#: Where the notebook directory is, for agents that have it.
NOTEBOOK_ENV = "SYMBI_NOTEBOOK_DIR"
#: The payload travels in the environment, where Linux caps one variable at 128 KiB.
MAX_PAYLOAD_BYTES = 100_000


@dataclasses.dataclass(frozen=True)
class Emitted:
    """A value a trigger recorded with ``emit("name", value)``."""

    agent: str
    trigger: str
    name: str
    value: Any

    def __str__(self) -> str:
        from .render import render_emitted_text

        return render_emitted_text(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        from .render import render_emitted_html

        return render_emitted_html(self)


ActionResult = ExecutionResult | Emitted


def run_trigger(
    agent: Agent,
    name: str,
    payload: Any = None,
    *,
    on_output: Callable[[str, bytes], None] | None = None,
    on_result: Callable[[ActionResult], None] | None = None,
    limits: ResourceLimits | None = None,
) -> list[ActionResult]:
    """Run trigger ``name`` of ``agent``: see :meth:`Agent.trigger`."""
    trigger = agent.triggers.get(name)
    if trigger is None:
        known = ", ".join(repr(t) for t in agent.triggers) or "none"
        raise ConfigError(f"agent {agent.name} has no trigger {name!r}; its triggers: {known}")
    perms = permissions(agent)
    encoded = encode_payload(payload)
    # Nothing runs if the agent's own definition forbids any action of the trigger.
    for action in trigger.actions:
        if isinstance(action, Run):
            try:
                perms.check(action)
            except PolicyViolation as exc:
                perms.orchestrator.audit_refusal(
                    agent.tier, exc, agent=agent.name, trigger=trigger.name
                )
                raise
    if limits is not None:
        # Above a ceiling is the orchestrator's refusal, audited; below it the flags
        # can only lower what the agent's mode gives.
        admitted = perms.orchestrator.admit_limits(
            limits, agent.tier, agent=agent.name, trigger=trigger.name
        )
        perms = dataclasses.replace(perms, limits=lowered(perms.limits, admitted, limits.network))
    env = {PAYLOAD_ENV: encoded, "SYMBI_AGENT": agent.name, "SYMBI_TRIGGER": trigger.name}
    results: list[ActionResult] = []
    last: ExecutionResult | None = None
    for action in trigger.actions:
        item: ActionResult
        if isinstance(action, Emit):
            item = Emitted(
                agent.name, trigger.name, action.name, _resolve(action.value, payload, last)
            )
        else:
            item = last = _run(agent, perms, action, env, on_output)
        results.append(item)
        if on_result is not None:
            on_result(item)
        if isinstance(item, ExecutionResult) and not item.success:
            break
    return results


def lowered(mode: ResourceLimits, asked: ResourceLimits, network: bool | None) -> ResourceLimits:
    """``mode``'s limits lowered to ``asked`` wherever it asks for less, never raised;
    ``network=False`` withdraws the network, ``True`` grants nothing ``mode`` lacks."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ResourceLimits):
        have, want = getattr(mode, field.name), getattr(asked, field.name)
        if field.name == "network":
            values["network"] = False if network is False else have
        elif have is None or want is None:
            values[field.name] = want if have is None else have
        else:
            values[field.name] = min(have, want)
    return ResourceLimits(**values)


def encode_payload(payload: Any) -> str:
    """The payload as strict JSON (ASCII, so any character survives every tier's
    environment); :class:`ConfigError` if it is not JSON or too large."""
    try:
        text = json.dumps(payload, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the trigger payload must be JSON data: {exc}") from None
    if len(text) > MAX_PAYLOAD_BYTES:
        raise ConfigError(
            f"the trigger payload is {len(text)} bytes as JSON; at most {MAX_PAYLOAD_BYTES} "
            f"travel in ${PAYLOAD_ENV} (put larger data in the notebook directory)"
        )
    return text


def _run(
    agent: Agent,
    perms: Permissions,
    action: Run,
    env: dict[str, str],
    on_output: Callable[[str, bytes], None] | None,
) -> ExecutionResult:
    orch = perms.orchestrator
    tier = SecurityTier.NONE if action.native else agent.tier
    env = dict(env)
    limits = perms.limits
    if "network" in action.needs:
        # Asked for explicitly: where the policy forbids it, the orchestrator refuses.
        limits = dataclasses.replace(limits, network=True)
    code = action.code
    # execute_native runs its command without a shell: the allowlist governs it.
    argv = policy.command_argv(code) if action.native else None
    volume = None
    if perms.mount:
        if tier is SecurityTier.NONE:
            # Where it is: the run reaches it past its private /tmp. Commands start
            # in the run directory, with the working directory's files, as the seed's
            # native runner starts in its working directory.
            env[NOTEBOOK_ENV] = notebook_directory(agent)
            volume = f"{env[NOTEBOOK_ENV]}:{env[NOTEBOOK_ENV]}:{perms.mount}"
        else:
            env[NOTEBOOK_ENV] = CONTAINER_NOTEBOOK_DIR
            volume = volume_spec(agent, perms.mount)
            if action.is_command:
                # A separate line: the command itself stays exactly as written.
                code = f'cd "${NOTEBOOK_ENV}" || exit 126\n{code}'
    if volume is not None:
        why_not = mount_refusal(orch, tier)
        if why_not:
            raise TierUnavailable(f"the notebook directory cannot be mounted: {why_not}")
    return orch.execute_code(
        tier,
        code,
        env=env,
        language=None if argv else action.language,
        limits=limits,
        on_output=on_output,
        volumes=(volume,) if volume else (),
        argv=argv,
    )


def _resolve(value: Any, payload: Any, last: ExecutionResult | None) -> Any:
    """An emit's value, with references read now."""
    if isinstance(value, list):
        return [_resolve(item, payload, last) for item in value]
    if not isinstance(value, Ref):
        return value
    head, *rest = value.path
    if head == "result":
        if last is None:
            raise ConfigError(
                f"emit: {value} names the previous action's result, but no action ran before it"
            )
        field = getattr(last, rest[0])
        return field.value if isinstance(field, SecurityTier) else field
    current = payload
    for key in rest:
        if not isinstance(current, dict) or key not in current:
            raise ConfigError(f"emit: the payload has no {value}")
        current = current[key]
    return current
