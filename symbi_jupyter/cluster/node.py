"""``symbi-jupyter node start``: make this machine a node of a cluster (or its head).

It asks this machine's own orchestrator (configured as ``symbi-jupyter run``
configures one: ``$SYMBIONT_CONFIG``, ``--config``, the Jupyter config files,
``SYMBIONT_*``) which tiers work here, advertises one Ray resource per tier that does
(``symbi_tier1: SLOTS``, ...), starts Ray with token authentication, and starts the
node's agent, pinned to the node. A tier asked for that does not work here is an
error saying why; tier None is offered only where this node's operator allows native
execution.

``symbi-jupyter node stop``: the node leaves the cluster. ``node start`` records each
node it starts (``$XDG_STATE_HOME/symbi-jupyter/cluster/nodes/``, one 0600 file per
Ray directory), so that ``stop`` stops exactly that node: its agent first (runs,
sessions, pooled containers), then every process of its Ray directory, then any
container its agent left; the machine's other Ray processes are left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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


def nodes_path() -> Path:
    """Where ``node start`` records the nodes it started, one file per Ray directory."""
    return auth.default_token_path().parent / "nodes"


def _record_path(temp_dir: str) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.realpath(temp_dir))).hexdigest()[:16]
    return nodes_path() / f"{digest}.json"


def record_node(started: StartedNode) -> Path:
    """Record ``started`` for ``node stop`` (0600, in a 0700 directory)."""
    path = _record_path(started.temp_dir)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "address": started.address,
        "node_id": started.node_id,
        "temp_dir": started.temp_dir,
        "agent_pid": started.info["pid"],
        # The TLS files it started with (paths only), for a `node stop` in a shell
        # without RAY_TLS_*: its agent is asked to shut down over TLS too.
        "tls": tls.environment(),
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)
    return path


def recorded_nodes() -> list[dict[str, Any]]:
    """The nodes ``node start`` recorded, each with ``record`` (its file)."""
    found = []
    for path in sorted(nodes_path().glob("*.json")):
        try:
            found.append({**json.loads(path.read_text()), "record": str(path)})
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); remove it") from None
    return found


def find_node(temp_dir: str | None) -> dict[str, Any]:
    """The node this machine started with Ray directory ``temp_dir`` (a ``node start``
    or a node of the trial cluster), or the one ``node start`` recorded if
    ``temp_dir`` is None; :class:`ConfigError` naming what is known otherwise."""
    from .local import read_state

    started = recorded_nodes()
    if temp_dir is None:
        if len(started) == 1:
            return started[0]
        if not started:
            raise ConfigError(
                f"no node started here with `symbi-jupyter node start` is running "
                f"(none is recorded in {nodes_path()}); a trial cluster stops with "
                "`symbi-jupyter cluster down`"
            )
        raise ConfigError(
            f"{len(started)} nodes were started here; say which with --temp-dir: "
            + ", ".join(n["temp_dir"] for n in started)
        )
    wanted = os.path.realpath(temp_dir)
    trial = read_state() or {}
    trial_nodes = [
        {**n, "address": trial["address"], "tls": trial.get("tls")}
        for n in trial.get("nodes", [])
        if n.get("node_id")
    ]
    for node in started + trial_nodes:
        if os.path.realpath(node["temp_dir"]) == wanted:
            return node
    known = [n["temp_dir"] for n in started + trial_nodes]
    raise ConfigError(
        f"--temp-dir {temp_dir}: no node this machine started has that Ray directory "
        f"(known: {', '.join(known) or 'none'}); `node stop` stops only nodes that "
        "`node start` or `cluster up` started here"
    )


def stop_node(temp_dir: str | None = None, say: Callable[[str], None] = print) -> bool:
    """Stop the node :func:`find_node` finds: its agent (runs, sessions, pooled
    containers), then every process of its Ray directory, then any container its
    agent left. True if nothing of it is left."""
    node = find_node(temp_dir)
    directory = node["temp_dir"]
    agent_pids = {node["agent_pid"]} if node.get("agent_pid") else set()
    running = processes.processes_of(directory)
    answered: set[int] = set()
    if running:  # a node whose processes are gone has no agent to ask
        from .agent import shut_down_agents

        tls.use(node.get("tls"))
        answered = shut_down_agents(node["address"], [node["node_id"]])
        agent_pids |= answered
    left = processes.stop_all(directory)
    containers = processes.remove_containers(agent_pids)
    label = f"node {node['node_id']} (Ray directory {directory})"
    if running:
        if answered:
            say(f"stopped {label}: its agent, then {len(running)} process(es)")
        else:
            say(f"stopped {label}: {len(running)} process(es); its agent did not answer")
    else:
        say(f"{label} had no process running")
    if containers:
        say(f"removed {len(containers)} container(s) its agent left: {', '.join(containers)}")
    if left:
        say(f"could not stop processes {sorted(left)}")
        return False
    if "record" in node:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(node["record"])
    return True
