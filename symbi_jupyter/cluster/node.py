"""``symbi-jupyter node start``: make this machine a node of a cluster (or its head).

It asks this machine's own orchestrator (configured as ``symbi-jupyter run``
configures one: ``$SYMBIONT_CONFIG``, ``--config``, the Jupyter config files,
``SYMBIONT_*``) which tiers work here, advertises one Ray resource per tier that does
(``symbi_tier1: SLOTS``, ...), starts Ray with token authentication, and starts the
node's agent, pinned to the node. A tier asked for that does not work here is an
error saying why; tier None is offered only where this node's operator allows native
execution.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import policy
from ..errors import ConfigError, SymbiError, TierUnavailable
from ..limits import host_cores
from ..tiers import SecurityTier
from . import auth, processes, rayctl, resource_name, tls


@dataclasses.dataclass
class StartedNode:
    """A node ``node start`` started."""

    #: the cluster's address (its head's)
    address: str
    node_id: str
    #: Ray's directory of this node, which names its processes
    temp_dir: str
    #: the agent's :meth:`~.agent.NodeAgent.info`
    info: dict[str, Any]


def plan_tiers(
    asked: Sequence[str] | None, slots: int, config: str | None = None
) -> dict[str, int]:
    """Tier -> slots this node advertises: the tiers ``asked`` (default: every tier
    that works here), each checked by this machine's orchestrator; :class:`SymbiError`
    naming the tier and why when one asked for does not work, or none does."""
    from ..cli_run import configured_orchestrator

    if slots < 1:
        raise TierUnavailable(f"--slots {slots}: a node needs at least one slot per tier")
    tiers = [SecurityTier.parse(t) for t in asked] if asked else list(SecurityTier)
    orch = configured_orchestrator(config)
    try:
        check_passthrough(orch.env_passthrough)
        refused: dict[SecurityTier, str] = {}
        for tier in dict.fromkeys(tiers):
            try:
                policy.check_tier_allowed(tier, orch.allow_native_execution)
                found = orch.sandbox(tier).availability()
            except SymbiError as exc:
                refused[tier] = str(exc)
                continue
            if not found.ok:
                refused[tier] = found.reason
    finally:
        orch.close()
    if asked and refused:
        raise TierUnavailable(
            "; ".join(
                f"{t.display_name} cannot run on this node: {why}" for t, why in refused.items()
            )
        )
    plan = {t.value: slots for t in dict.fromkeys(tiers) if t not in refused}
    if not plan:
        raise TierUnavailable(
            "no tier can run on this node: "
            + "; ".join(f"{t.display_name}: {why}" for t, why in refused.items())
        )
    return plan


def check_passthrough(names: Sequence[str]) -> None:
    """:class:`ConfigError` if the node's operator lets a Ray variable through to
    tier None runs: on a node they hold the cluster's token (``RAY_AUTH_TOKEN``), or
    name it, and a run that has it can run code anywhere on the cluster."""
    ray_names = [name for name in names if name.upper().startswith("RAY_")]
    if ray_names:
        raise ConfigError(
            f"env_passthrough names {', '.join(ray_names)}: on a cluster node Ray's "
            "variables hold or name the cluster's token, and no run may have them; "
            "remove them from env_passthrough"
        )


def closed_directory(temp_dir: str | None) -> str:
    """Ray's directory for a node: ``temp_dir``, or ``ray`` in a new directory only
    this user can enter. Ray opens its directory to everyone (mode 0777; its logs and
    session files 0644, its sockets 0755), so only a closed directory above it keeps
    its logs, sockets and session files from a tier None run's own uid and from the
    machine's other users: :class:`ConfigError` if no directory above ``temp_dir`` is
    closed to them."""
    if not temp_dir:
        return os.path.join(tempfile.mkdtemp(prefix="symbi-ray-"), "ray")
    path = Path(os.path.abspath(temp_dir))
    for above in path.resolve().parents:
        try:
            info = above.stat()
        except OSError:
            continue  # not made yet: Ray makes it
        if info.st_uid in (0, os.geteuid()) and not info.st_mode & 0o077:
            return str(path)
    raise ConfigError(
        f"--temp-dir {temp_dir}: Ray opens its directory to every user (mode 0777), "
        "and no directory above it is closed to other users, so a tier None run of "
        "this node could read Ray's logs and session files; put it in a directory "
        f"only you can enter (mkdir -m 700 {path.parent}), or leave --temp-dir out"
    )


def start_node(
    address: str | None = None,
    *,
    tiers: Sequence[str] | None = None,
    slots: int | None = None,
    config: str | None = None,
    temp_dir: str | None = None,
    num_cpus: int | None = None,
    node_ip: str | None = None,
    port: int = 6379,
    object_store_mb: int | None = None,
    shared_host: bool = False,
    say: Callable[[str], None] = print,
) -> StartedNode:
    """Start Ray on this machine, as the head (``address`` None, on ``port``) or as a
    node of the cluster at ``address``, with the tiers of :func:`plan_tiers` and its
    agent. ``shared_host``: other nodes run on this machine too (a trial cluster), so
    no fixed port of Ray's is used. On failure, what it started is stopped again."""
    config = os.path.abspath(config) if config else None
    tls.environment()  # a TLS key others could read: refused before anything starts
    if temp_dir:
        temp_dir = closed_directory(temp_dir)
    plan = plan_tiers(tiers, slots or host_cores(), config)
    rayctl.import_ray()
    token = auth.ensure_token() if address is None else auth.checked_token(auth.token_path())
    env = {**os.environ, **auth.ray_environment(token)}
    directory = temp_dir or closed_directory(None)
    args = ["start", "--temp-dir", directory, "--disable-usage-stats"]
    args += [
        "--resources",
        json.dumps({resource_name(SecurityTier.parse(t)): n for t, n in plan.items()}),
    ]
    if address is None:
        args += ["--head", "--port", str(port), "--include-dashboard", "false"]
    else:
        args += ["--address", address]
    if node_ip:
        args += ["--node-ip-address", node_ip]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if object_store_mb is not None:
        args += ["--object-store-memory", str(object_store_mb * 1024 * 1024)]
    if shared_host:
        args += ["--dashboard-agent-listen-port", "0", "--min-worker-port", "0"]
        args += ["--max-worker-port", "0"]
    try:
        ran = subprocess.run(
            rayctl.ray_command(*args), env=env, capture_output=True, text=True, timeout=300
        )
        if ran.returncode != 0:
            tail = "\n".join((ran.stdout + ran.stderr).strip().splitlines()[-8:])
            raise TierUnavailable(f"ray start failed (exit {ran.returncode}):\n{tail}")
        if address is None:
            address = Path(directory, "ray_current_cluster").read_text().strip()
        return _start_agent(address, directory, plan, config, say)
    except BaseException:
        processes.stop_all(directory)
        raise


def _start_agent(
    address: str,
    directory: str,
    plan: dict[str, int],
    config: str | None,
    say: Callable[[str], None],
) -> StartedNode:
    from .agent import describe, start_agent

    ray = rayctl.connect(address, temp_dir=directory)
    try:
        node_id = ray.get_runtime_context().get_node_id()
        node_address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
        agent = start_agent(node_id, node_address, plan, config)
        info = ray.get(agent.info.remote())
    finally:
        rayctl.disconnect()
    say(describe(info))
    return StartedNode(address=address, node_id=node_id, temp_dir=directory, info=info)
