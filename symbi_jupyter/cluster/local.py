"""``symbi-jupyter cluster up|down|status``: a trial cluster on this machine, on
127.0.0.1 only: a head and N-1 nodes, each a ``node start`` of its own (its own Ray
directory under one private root, its own ports, its own agent), with the token of
:mod:`.auth`.

What ``up`` started is written to a state file (``$XDG_STATE_HOME/symbi-jupyter/
cluster/local.json``), so that ``down`` stops exactly that: each agent first (its
runs, pooled containers and helpers), then every process of the nodes' directories,
then any container an agent left; Ray's processes elsewhere on the machine, whoever
started them, are left alone. ``up --tls`` also makes the cluster's CA, certificate
and key (:func:`.tls.make_files`) next to the state file, starts every node with
them, and records them there; ``down`` and ``status`` connect with them, and
``down`` removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import NAMESPACE, agent_name, auth, processes, rayctl, tls
from .agent import shut_down_agents
from .node import start_node

#: Where nodes of a trial cluster listen: this machine only.
LOOPBACK = "127.0.0.1"


def state_path() -> Path:
    return auth.default_token_path().parent / "local.json"


def read_state() -> dict[str, Any] | None:
    """What ``up`` started, or None if no trial cluster is recorded."""
    try:
        return json.loads(state_path().read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_path()}: unreadable ({exc}); remove it") from None


def _write_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def per_node(values: Sequence[str] | None, nodes: int, flag: str) -> list[str | None]:
    """A flag given once (every node) or once per node (head first)."""
    if not values:
        return [None] * nodes
    if len(values) == 1:
        return [values[0]] * nodes
    if len(values) != nodes:
        raise ConfigError(
            f"{flag} given {len(values)} times for {nodes} nodes: give it once (every node) "
            f"or {nodes} times (one per node, the head first)"
        )
    return [*values]


def up(
    nodes: int,
    *,
    tiers: Sequence[str] | None = None,
    configs: Sequence[str] | None = None,
    slots: int | None = None,
    num_cpus: int = 1,
    object_store_mb: int = 128,
    use_tls: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start a trial cluster of ``nodes`` nodes on 127.0.0.1 and return its state.
    ``tiers`` (comma-separated lists) and ``configs`` (config.toml files) are given
    once for every node or once per node, the head first. ``use_tls``: TLS on Ray's
    gRPC channels, with certificates made for it (this process then uses them too)."""
    if nodes < 1:
        raise ConfigError(f"--nodes {nodes}: a cluster has at least one node (its head)")
    tier_lists = per_node(tiers, nodes, "--tiers")
    config_files = per_node(configs, nodes, "--config")
    state = read_state()
    if state is not None:
        if any(processes.processes_of(n["temp_dir"]) for n in state["nodes"]):
            raise ConfigError(
                f"a trial cluster is already up at {state['address']}; "
                "`symbi-jupyter cluster down` first"
            )
        _forget(state)
    root = tempfile.mkdtemp(prefix="symbi-ray-")
    state = {"address": None, "root": root, "nodes": [], "token": str(auth.ensure_token())}
    _write_state(state)
    try:
        if use_tls:
            state["tls"] = tls.make_files(state_path().parent, LOOPBACK)
            _write_state(state)
            tls.use(state.get("tls"))
        for index in range(nodes):
            directory = os.path.join(root, f"n{index}")
            os.mkdir(directory, 0o700)
            state["nodes"].append({"temp_dir": directory})
            _write_state(state)
            listed = tier_lists[index]
            started = start_node(
                state["address"],
                tiers=[t for t in listed.split(",") if t.strip()] if listed else None,
                slots=slots,
                config=config_files[index],
                temp_dir=directory,
                num_cpus=num_cpus,
                node_ip=LOOPBACK,
                port=0,
                object_store_mb=object_store_mb,
                shared_host=True,
                say=say,
            )
            state["address"] = started.address
            state["nodes"][-1].update(
                node_id=started.node_id,
                agent_pid=started.info["pid"],
                tiers=started.info["tiers"],
            )
            _write_state(state)
    except BaseException:
        down(say=lambda line: None)
        raise
    plural = "s" if nodes > 1 else ""
    say(f"cluster up at {state['address']} ({nodes} node{plural}); token {state['token']}")
    if state.get("tls"):
        say(
            "TLS on its gRPC channels: a client needs the RAY_TLS_* files (the key is as "
            "secret as the token; it stays 0600)"
        )
    client_env = {**state.get("tls", {}), "SYMBIONT_CLUSTER_ADDRESS": state["address"]}
    say("use it: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in client_env.items()))
    return state


def down(say: Callable[[str], None] = print) -> bool:
    """Stop what ``up`` started; True if nothing of it is left."""
    state = read_state()
    if state is None:
        say("no trial cluster is up")
        return True
    agent_pids = {n["agent_pid"] for n in state["nodes"] if n.get("agent_pid")}
    tls.use(state.get("tls"))
    if state.get("address"):
        agent_pids |= shut_down_agents(
            state["address"], [n["node_id"] for n in state["nodes"] if n.get("node_id")]
        )
    left: set[int] = set()
    for node in reversed(state["nodes"]):  # the head last
        left |= processes.stop_all(node["temp_dir"])
    containers = processes.remove_containers(agent_pids)
    if containers:
        say(f"removed {len(containers)} container(s) the agents left: {', '.join(containers)}")
    if left:
        say(f"could not stop processes {sorted(left)}")
        return False
    _forget(state)
    say(f"cluster at {state['address']} is down")
    return True


def status(say: Callable[[str], None] = print) -> bool:
    """Say what the trial cluster runs; False if none is up."""
    from .agent import describe

    state = read_state()
    if state is None or not state.get("address"):
        say("no trial cluster is up")
        return False
    tls.use(state.get("tls"))
    ray = rayctl.connect(state["address"])
    try:
        say(f"cluster at {state['address']}")
        for node in state["nodes"]:
            try:
                agent = ray.get_actor(agent_name(node["node_id"]), namespace=NAMESPACE)
                say(describe(ray.get(agent.info.remote(), timeout=30)))
            except Exception as exc:
                say(f"node {node.get('node_id')}: no agent answers ({type(exc).__name__})")
    finally:
        rayctl.disconnect()
    return True


def _forget(state: dict[str, Any]) -> None:
    for _ in range(5):  # a daemon's last log line may land while the tree goes
        shutil.rmtree(state["root"], ignore_errors=True)
        if not os.path.exists(state["root"]):
            break
        time.sleep(0.2)
    tls.remove_files(state.get("tls", {}))
    with contextlib.suppress(FileNotFoundError):
        state_path().unlink()
