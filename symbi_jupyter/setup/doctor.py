"""``symbi-jupyter doctor``: what each tier can do on this host, and how to fix what
it cannot. ``%symbi_tiers`` shows the same ladder in a notebook."""

from __future__ import annotations

import os
from collections.abc import Callable

from .. import policy
from ..errors import SymbiError
from ..orchestrator import SandboxOrchestrator
from ..render import TierLadder
from ..tiers import SecurityTier


def policy_notes(orch: SandboxOrchestrator) -> list[str]:
    """What the configured policy allows, beyond what the host can run."""
    notes = [f"default tier: {SecurityTier.parse(orch.default_sandbox_tier).display_name}"]
    try:
        policy.check_tier_allowed(SecurityTier.NONE, orch.allow_native_execution)
        notes.append("tier None: allowed by policy")
    except SymbiError as exc:
        notes.append(f"tier None: refused by policy: {exc}")
    notes.append(
        "network: "
        + (
            "may be requested"
            if orch.allow_network
            else "off (SandboxOrchestrator.allow_network = False)"
        )
    )
    return notes


def run_doctor(*, reap: bool = False, say: Callable[[str], None] = print) -> int:
    orch = SandboxOrchestrator()
    try:
        if reap:
            _reap(orch, say)
        say(str(TierLadder(orch.availability())))
        say("")
        for note in policy_notes(orch):
            say(note)
        if os.geteuid() != 0:
            say("not root: symbi-jupyter setup (which installs the container tiers) needs root")
    finally:
        orch.close()
    return 0


def _reap(orch: SandboxOrchestrator, say: Callable[[str], None]) -> None:
    from ..sandboxes.docker import DockerSandbox
    from ..sandboxes.docker import reap as reap_containers

    docker = orch.sandbox(SecurityTier.TIER1)
    if not isinstance(docker, DockerSandbox):
        return  # not the Docker backend (an entry point of another package): nothing to reap
    if docker.availability().ok or "image" in docker.availability().reason:
        try:
            removed = reap_containers(docker.client(), log=say)
        except SymbiError as exc:
            say(f"reap: {exc}")
        else:
            say(f"reap: {len(removed)} container(s) of dead kernels removed")
    # Starting the native supervisor reaps run cgroups of dead kernels.
    native = orch.sandbox(SecurityTier.NONE)
    native.availability()
