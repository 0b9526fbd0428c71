"""What an agent may do under its orchestrator's policy: its capabilities and sandbox
mode, intersected with the operator's settings. The runner enforces these, the card
shows them; one computation serves both, so the card cannot promise what a run would
not get."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from .. import policy
from ..errors import ConfigError, PolicyViolation, SymbiError, TierUnavailable
from ..limits import CEILING_TRAITS, ResourceLimits
from ..tiers import SecurityTier
from .model import Agent, Run, SandboxMode
from .modes import SandboxModeLimits

if TYPE_CHECKING:
    from ..orchestrator import SandboxOrchestrator

#: Where containers see the notebook directory.
CONTAINER_NOTEBOOK_DIR = "/notebook"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether something is permitted, and why (or why not)."""

    subject: str
    allowed: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Permissions:
    """An agent's standing under its orchestrator's policy."""

    agent: Agent
    #: may the agent's tier run at all under this policy
    tier: Verdict
    #: do its runs get the network
    network: Verdict
    #: do its runs get the notebook directory
    filesystem: Verdict
    #: "ro", "rw" or None: how the notebook directory is given to its runs
    mount: str | None
    #: the mode's limits within the operator's ceilings; network as granted
    limits: ResourceLimits
    #: trigger name -> one verdict per code action, in order
    actions: dict[str, list[tuple[Run, Verdict]]]
    #: what runs the agent's actions: its own, else the default orchestrator
    orchestrator: SandboxOrchestrator = dataclasses.field(repr=False, compare=False)

    def check(self, action: Run) -> None:
        """Raise :class:`PolicyViolation` if the agent's own definition forbids
        ``action`` (an action of the wrong tier, a capability it lacks or its mode
        withholds). The operator's policy is applied by the orchestrator itself, which
        also audits its refusals, when the action runs."""
        refusal = _agent_refusal(self.agent, action)
        if refusal:
            raise PolicyViolation(
                f"agent {self.agent.name}: {action.summary} is refused: {refusal}"
            )


def permissions(agent: Agent) -> Permissions:
    """The :class:`Permissions` of ``agent`` under the orchestrator it is bound to, or,
    if none, the default one (:func:`~..orchestrator.default_orchestrator`)."""
    orch = agent.orchestrator
    if orch is None:
        from ..orchestrator import default_orchestrator

        orch = default_orchestrator()
    tier = _tier_verdict(agent.tier, orch.allow_native_execution, orch.native_refusal)
    network = _network_verdict(agent, orch.allow_network)
    mount = agent.sandbox.mount if agent.has("local_filesystem") else None
    filesystem = _filesystem_verdict(agent, mount, orch)
    mode_limits = SandboxModeLimits(parent=orch).limits(agent.sandbox)
    limits = dataclasses.replace(clamp(mode_limits, orch.ceilings()), network=network.allowed)
    actions = {
        name: [
            (a, _action_verdict(agent, a, orch, mount))
            for a in trigger.actions
            if isinstance(a, Run)
        ]
        for name, trigger in agent.triggers.items()
    }
    return Permissions(agent, tier, network, filesystem, mount, limits, actions, orch)


def clamp(limits: ResourceLimits, ceilings: ResourceLimits) -> ResourceLimits:
    """``limits`` lowered to ``ceilings`` wherever they ask for more: a mode's defaults
    never raise what the operator set."""
    values: dict[str, Any] = {}
    for name in CEILING_TRAITS:
        if name == "network":
            continue
        asked, ceiling = getattr(limits, name), getattr(ceilings, name)
        values[name] = (
            asked if ceiling is None or (asked is not None and asked <= ceiling) else ceiling
        )
    return ResourceLimits(**values)


def _tier_verdict(tier: SecurityTier, allow_native: bool, howto: str) -> Verdict:
    try:
        policy.check_tier_allowed(tier, allow_native, howto=howto)
    except SymbiError as exc:
        return Verdict(f"tier {tier.value}", False, str(exc))
    if tier is SecurityTier.NONE:
        return Verdict("tier None", True, "native execution is allowed (no isolation)")
    return Verdict(f"tier {tier.value}", True, f"runs in {tier.display_name}")


def _network_verdict(agent: Agent, allow_network: bool) -> Verdict:
    if not agent.has("network"):
        return Verdict("network", False, "no network capability")
    if not agent.sandbox.allows_network:
        return Verdict("network", False, "Strict mode permits no network")
    if not allow_network:
        return Verdict(
            "network",
            False,
            "the policy forbids it "
            "(SandboxOrchestrator.allow_network = False); runs get no network",
        )
    return Verdict("network", True, "capability network, allowed by the policy")


def _filesystem_verdict(agent: Agent, mount: str | None, orch: Any) -> Verdict:
    if not agent.has("local_filesystem"):
        return Verdict(
            "local_filesystem",
            False,
            "no local_filesystem capability: runs see only their private directory",
        )
    if mount is None:
        return Verdict("local_filesystem", False, "Strict mode mounts nothing")
    access = "read-only" if mount == "ro" else "read-write"
    if agent.tier is SecurityTier.NONE:
        note = (
            "; not enforced at tier None, which does not isolate"
            if mount == "ro"
            else " (tier None does not isolate)"
        )
        return Verdict(
            "local_filesystem",
            True,
            f"the notebook directory in $SYMBI_NOTEBOOK_DIR, {access}{note}; execute and "
            "execute_native start in the run directory, with the working directory's files",
        )
    try:
        why_not = mount_refusal(orch, agent.tier)
        if why_not:
            raise TierUnavailable(why_not)
        policy.validate_volume(volume_spec(agent, mount))
    except SymbiError as exc:
        return Verdict(
            "local_filesystem", False, f"the notebook directory cannot be mounted: {exc}"
        )
    return Verdict(
        "local_filesystem",
        True,
        f"the notebook directory is mounted {access} at {CONTAINER_NOTEBOOK_DIR}, "
        "where execute starts",
    )


def mount_refusal(orch: Any, tier: SecurityTier) -> str | None:
    """Why the sandbox of ``tier`` cannot mount a directory; None if it can."""
    try:
        sandbox = orch.sandbox(tier)
    except SymbiError as exc:
        return str(exc)
    if not sandbox.supports_volumes:
        return f"{tier.display_name} cannot mount directories in this version"
    return None


def volume_spec(agent: Agent, mount: str) -> str:
    """The container mount of the agent's notebook directory, HOST:CONTAINER:MODE."""
    return f"{notebook_directory(agent)}:{CONTAINER_NOTEBOOK_DIR}:{mount}"


def notebook_directory(agent: Agent) -> str:
    """The agent's notebook directory, resolved; :class:`ConfigError` if it is missing
    or cannot be mounted."""
    path = os.path.realpath(agent.directory or os.getcwd())
    if not os.path.isdir(path):
        raise ConfigError(f"agent {agent.name}: the notebook directory {path} does not exist")
    if ":" in path:
        raise ConfigError(
            f"agent {agent.name}: the notebook directory {path} contains ':', "
            "which a container mount cannot carry"
        )
    return path


def _agent_refusal(agent: Agent, action: Run) -> str | None:
    """Why the agent's own definition forbids ``action``; None if it does not."""
    if action.native and agent.tier is not SecurityTier.NONE:
        return (
            f"execute_native runs code natively (tier None), but agent {agent.name} "
            f"runs at {agent.tier.display_name}; use execute(...) to run at its tier"
        )
    if action.native:
        try:
            policy.command_argv(action.code)
        except SymbiError as exc:
            return str(exc)
    for need in action.needs:
        if not agent.has(need):
            return (
                f"it needs the {need} capability, which agent {agent.name} lacks "
                "(security { capabilities: [...] })"
            )
        if need == "network" and not agent.sandbox.allows_network:
            return "it needs the network, which Strict mode never permits"
        if need == "local_filesystem" and agent.sandbox is SandboxMode.STRICT:
            return "it needs the notebook directory, which Strict mode never mounts"
    return None


def _action_verdict(agent: Agent, action: Run, orch: Any, mount: str | None) -> Verdict:
    refusal = _agent_refusal(agent, action)
    if refusal:
        return Verdict(action.summary, False, refusal)
    tier = _tier_verdict(agent.tier, orch.allow_native_execution, orch.native_refusal)
    if not tier.allowed:
        return Verdict(action.summary, False, f"refused by the policy: {tier.subject} may not run")
    if "network" in action.needs and not orch.allow_network:
        return Verdict(
            action.summary,
            False,
            "refused by the policy: it needs the network, which "
            "SandboxOrchestrator.allow_network forbids",
        )
    if agent.tier is SecurityTier.NONE:
        # What the run will start, checked as the orchestrator will check it.
        try:
            if action.native:
                cwd = notebook_directory(agent) if mount else None
                orch.command_program(policy.command_argv(action.code)[0], None, cwd)
            else:
                orch.interpreter(policy.language_spec(action.language)[0])
        except SymbiError as exc:
            return Verdict(action.summary, False, f"refused by the policy: {exc}")
    return Verdict(action.summary, True, f"runs at {agent.tier.display_name}")
