"""orch.map over a real Ray cluster of two nodes on 127.0.0.1, started by the project's
own `symbi-jupyter cluster up` (each offering Tier1) and torn down after each test.

The items are the gated ones of test_map: each waits at its gate until the test
releases it, so what runs at once and where is seen from /proc (a container's
processes are this machine's), not from how fast anything runs. A node is killed as
a machine that dies would be: SIGKILL to every process of its Ray directory."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from symbi_jupyter.cluster import resource_name
from symbi_jupyter.errors import ConfigError, TierUnavailable
from symbi_jupyter.limits import ResourceLimits
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.docker import HOST_LABEL, host_tag
from symbi_jupyter.sandboxes.supervisor.proctree import pid_alive
from symbi_jupyter.tiers import SecurityTier

from .cluster_fixtures import need_cluster
from .helpers import wait_until
from .test_cluster import Cluster, _node_env
from .test_map import GATED, ITEM, Gatekeeper, gated_items, items_in_proc

LIMITS = ResourceLimits(timeout_seconds=180)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path):
    """Two nodes offering Tier1 with ``slots`` slots each (the test's parameter, 2 by
    default), and this process connected to them."""
    need_cluster(("docker",))
    slots = getattr(request, "param", 2)
    (tmp_path / "jupyter").mkdir()
    env = _node_env(tmp_path / "state", tmp_path / "jupyter")
    saved = {
        k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_CLIENT_MODE")
    }
    made = Cluster("", env, {}, tmp_path / "state")
    up = made.cli("cluster", "up", "--nodes", "2", "--tiers", "docker", "--slots", str(slots))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state_file = tmp_path / "state" / "symbi-jupyter" / "cluster" / "local.json"
        made.state = json.loads(state_file.read_text())
        made.address = made.state["address"]
        os.environ["RAY_AUTH_TOKEN_PATH"] = made.token
        yield made
    finally:
        from symbi_jupyter.cluster import rayctl

        rayctl.disconnect()
        down = made.cli("cluster", "down")
        for key, value in saved.items():  # what connecting set in this process
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture
def client(cluster: Cluster, audit_path: Path):
    o = SandboxOrchestrator(cluster_address=cluster.address, audit_log_path=str(audit_path))
    yield o
    o.close()


def release(token: str) -> None:
    for pid, waiting in items_in_proc(token).values():
        if waiting:
            os.kill(pid, signal.SIGUSR1)


def waiting(token: str) -> dict[int, int]:
    """Item index -> pid of the items of ``token`` waiting at their gate."""
    return {i: pid for i, (pid, w) in items_in_proc(token).items() if w}


def node_of_item(pid: int, cluster: Cluster) -> str | None:
    """The node whose agent started the container an item's interpreter runs in."""
    import docker

    tags = {
        host_tag(n["agent_pid"]): cluster.label(i) for i, n in enumerate(cluster.state["nodes"])
    }
    ancestry = set()
    while pid > 1:
        ancestry.add(pid)
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    for container in docker.from_env().containers.list(
        filters={"label": HOST_LABEL}, ignore_removed=True
    ):
        if container.attrs["State"]["Pid"] in ancestry:
            return tags.get(container.labels[HOST_LABEL])
    return None


def kill_node(cluster: Cluster, index: int) -> None:
    """SIGKILL every process of node ``index`` (its raylet, its workers, its agent)."""
    from symbi_jupyter.cluster import processes

    pids = processes.processes_of(cluster.state["nodes"][index]["temp_dir"])
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(pid_alive(p) for p in pids), 30)


def test_map_fills_the_free_slots_of_both_nodes_and_keeps_input_order(client, cluster):
    """Four slots, one held by another run: three items run at once, never more,
    spread over both nodes (two slots each); a failing item fails alone."""
    from symbi_jupyter.cluster import rayctl

    ray = rayctl.connect(cluster.address)
    other = uuid.uuid4().hex[:12]
    held: list = []
    holder = threading.Thread(
        target=lambda: held.append(
            client.execute_code("docker", GATED, env={ITEM: f"{other}-0"}, limits=LIMITS)
        ),
        daemon=True,
    )
    holder.start()
    token = uuid.uuid4().hex[:12]
    keeper = Gatekeeper(token, 6, 3)
    try:
        assert wait_until(lambda: waiting(other), 120), "the holding run never started"
        slot = resource_name(SecurityTier.TIER1)
        assert wait_until(lambda: ray.available_resources().get(slot) == 3, 30)
        items: list = gated_items(token, 6)
        items.insert(3, "raise ValueError('a bad item')")
        keeper.start()
        try:
            results = client.map(items, tier="docker", limits=LIMITS, progress=False)
        finally:
            keeper.done.set()
            keeper.join(10)
        if keeper.error is not None:
            raise keeper.error
    finally:
        release(other)
        holder.join(60)
    assert held and held[0].success
    assert keeper.most == 3  # the free slots, all used, never more
    bad = results.pop(3)
    assert not bad.success and "ValueError: a bad item" in bad.stderr
    assert bad.node in (cluster.head, cluster.node2)
    assert all(r.success for r in results), [str(r) for r in results]
    assert [int(r.stdout.split()[0]) for r in results] == list(range(6))
    assert {r.node for r in results} == {cluster.head, cluster.node2}
    # A tier no node offers: refused once, before anything runs, naming the cluster.
    with pytest.raises(TierUnavailable, match=f"no node of the cluster at {cluster.address}"):
        client.map(["print(1)"] * 3, tier="gvisor", progress=False)


def lost_node_map(client, cluster, **kwargs):
    """Three items on two one-slot nodes; node 2 killed while it runs one of them
    (released afterwards, with the rest). The results, and which item node 2 had."""
    token = uuid.uuid4().hex[:12]
    out: list = []
    mapper = threading.Thread(
        target=lambda: out.append(
            client.map(
                gated_items(token, 3), tier="docker", limits=LIMITS, progress=False, **kwargs
            )
        ),
        daemon=True,
    )
    mapper.start()
    try:
        assert wait_until(lambda: len(waiting(token)) == 2, 120), "two items never ran at once"
        on = {i: node_of_item(pid, cluster) for i, pid in waiting(token).items()}
        assert sorted(on.values()) == sorted([cluster.head, cluster.node2]), on
        lost = next(i for i, node in on.items() if node == cluster.node2)
        kill_node(cluster, 1)
    finally:
        while mapper.is_alive():  # every item that waits, wherever it runs
            release(token)
            mapper.join(0.1)
    return out[0], lost


@pytest.mark.parametrize("cluster", [1], indirect=True)
def test_a_node_lost_mid_map_is_that_items_failed_result(client, cluster):
    results, lost = lost_node_map(client, cluster)
    assert len(results) == 3
    gone = results[lost]
    assert not gone.success and gone.node == cluster.node2
    assert f"lost the run on node {cluster.node2}" in gone.error
    assert "not retried" in gone.error
    others = [r for i, r in enumerate(results) if i != lost]
    assert all(r.success and r.node == cluster.head for r in others), [str(r) for r in others]
    assert [int(r.stdout.split()[0]) for r in others] == [i for i in range(3) if i != lost]


@pytest.mark.parametrize("cluster", [1], indirect=True)
def test_retry_lost_runs_a_lost_item_once_more_on_another_node(client, cluster):
    results, lost = lost_node_map(client, cluster, retry_lost=True)
    assert all(r.success and r.node == cluster.head for r in results), [str(r) for r in results]
    assert [int(r.stdout.split()[0]) for r in results] == [0, 1, 2]
    assert results[lost].node == cluster.head  # ran again, elsewhere


def test_retry_lost_is_checked(orch):
    with pytest.raises(ConfigError, match="retry_lost='yes'"):
        orch.map(["print(1)"], tier="none", retry_lost="yes", progress=False)
