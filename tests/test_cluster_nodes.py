"""A node that leaves the cluster, and a cluster that loses its head, for real: trial
clusters of `symbi-jupyter cluster up` on 127.0.0.1 (a head offering Tier2 only and a
node offering Tier1 only, so every Tier1 run and session goes to node 2), one per
test, since each test stops part of its cluster; and `node start`/`node stop` of a
single node."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .cluster_fixtures import Cluster, need_cluster, node_env, trial_cluster
from .helpers import wait_until
from .test_cluster_sessions import cluster_kernel, finish, start, stream, wait_for_output

TIMEOUT = 180

CLIENT = """
import sys
from symbi_jupyter.orchestrator import SandboxOrchestrator
orch = SandboxOrchestrator(cluster_address=sys.argv[1], audit_log_path="")
try:
    orch.execute_code("docker", "import time\\nprint('started', flush=True)\\ntime.sleep(600)",
                      on_output=lambda name, chunk: print(chunk.decode(), end="", flush=True))
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}", flush=True)
"""


@pytest.fixture
def cluster(tmp_path: Path):
    need_cluster()
    args = ("--nodes", "2", "--tiers", "gvisor", "--tiers", "docker", "--slots", "2")
    with trial_cluster(tmp_path, *args) as made:
        yield made


def tier1_client(cluster: Cluster) -> subprocess.Popen:
    """A client whose Tier1 run (on node 2) has started: it prints how its call ended."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, cluster.address],
        env={**cluster.env, "RAY_AUTH_TOKEN_PATH": cluster.token},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    return proc


def containers_of(agent_pid: int) -> list[str]:
    """The project's containers whose owner is the agent ``agent_pid``."""
    import docker

    from symbi_jupyter.sandboxes.docker.options import HOST_LABEL, LABEL
    from symbi_jupyter.sandboxes.supervisor.proctree import host_tag

    labels = [LABEL, f"{HOST_LABEL}={host_tag(agent_pid)}"]
    found = docker.from_env().containers.list(
        all=True, filters={"label": labels}, ignore_removed=True
    )
    return [c.short_id for c in found]


def running(directory: str) -> dict[int, str]:
    """The processes of a node's Ray directory, with the programs they run (raylet, ...)."""
    from symbi_jupyter.cluster.processes import processes_of

    found = {}
    for pid in processes_of(directory):
        try:
            found[pid] = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            continue
    return found


def programs(directory: str) -> set[str]:
    return set(running(directory).values())


def daemons(directory: str) -> set[int]:
    """Ray's daemons of a node (its workers come and go)."""
    return {pid for pid, name in running(directory).items() if name in ("raylet", "gcs_server")}


def test_node_stop_stops_that_node_and_its_run_is_lost(cluster):
    """`node stop --temp-dir` of node 2 mid-run: node 2's processes and containers are
    gone, its client's call ends with NodeLost naming the node, and the head and its
    agent go on."""
    from symbi_jupyter.cluster.processes import processes_of
    from symbi_jupyter.sandboxes.supervisor.proctree import pid_alive

    node2 = cluster.state["nodes"][1]
    head_dir = cluster.state["nodes"][0]["temp_dir"]
    client = tier1_client(cluster)
    try:
        assert containers_of(node2["agent_pid"])  # the run's container, and the pool's
        head_daemons = daemons(head_dir)
        stopped = cluster.cli("node", "stop", "--temp-dir", node2["temp_dir"])
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"stopped node {node2['node_id']}" in stopped.stdout
        said = client.communicate(timeout=TIMEOUT)[0]
    finally:
        client.kill()
    lost = f"NodeLost: the cluster at {cluster.address} lost the run on node {cluster.node2}: "
    assert said.startswith(lost), said
    assert f"node {cluster.node2} left the cluster mid-run" in said
    assert processes_of(node2["temp_dir"]) == set()
    assert containers_of(node2["agent_pid"]) == []
    # The head's daemons and agent are untouched, and its agent still answers.
    assert len(head_daemons) == 2 and head_daemons == daemons(head_dir)
    assert pid_alive(cluster.state["nodes"][0]["agent_pid"])
    status = cluster.cli("cluster", "status")
    assert f"node {cluster.head}: Tier2 x2" in status.stdout, status.stdout + status.stderr
    assert f"node {node2['node_id']}: no agent answers" in status.stdout
    # A node stopped already: nothing to stop, and said so.
    again = cluster.cli("node", "stop", "--temp-dir", node2["temp_dir"])
    assert again.returncode == 0 and "had no process running" in again.stdout


def test_node_stop_refuses_a_node_it_does_not_know(tmp_path):
    env = node_env(tmp_path / "state", tmp_path / "jupyter")
    cli = [sys.executable, "-m", "symbi_jupyter.cli", "node", "stop"]
    unknown = subprocess.run(
        [*cli, "--temp-dir", str(tmp_path / "ray")], env=env, capture_output=True, text=True
    )
    assert unknown.returncode == 2
    assert "no node this machine started has that Ray directory" in unknown.stderr
    none = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert none.returncode == 2
    assert "no node started here with `symbi-jupyter node start` is running" in none.stderr


def test_node_start_records_its_node_and_node_stop_stops_it(tmp_path):
    """A head of its own (a free port), recorded 0600 by `node start`, stopped by a
    bare `node stop`, which then knows no node."""
    from symbi_jupyter.cluster.processes import processes_of

    need_cluster()
    (tmp_path / "jupyter").mkdir()
    env = node_env(tmp_path / "state", tmp_path / "jupyter")
    root = tempfile.mkdtemp(prefix="symbi-ns-")  # 0700; short, for Ray's socket paths
    directory = os.path.join(root, "ray")
    cli = [sys.executable, "-m", "symbi_jupyter.cli", "node"]
    one = ("--port", "0", "--tiers", "docker", "--slots", "1", "--num-cpus", "1")
    started = subprocess.run(
        [*cli, "start", *one, "--temp-dir", directory],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"stop it: symbi-jupyter node stop --temp-dir {directory}" in started.stdout
        [record] = (tmp_path / "state" / "symbi-jupyter" / "cluster" / "nodes").glob("*.json")
        assert record.stat().st_mode & 0o777 == 0o600
        assert json.loads(record.read_text())["temp_dir"] == directory
        assert "raylet" in programs(directory)
        stopped = subprocess.run(
            [*cli, "stop"], env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert processes_of(directory) == set()
        assert not record.exists()
        again = subprocess.run([*cli, "stop"], env=env, capture_output=True, text=True)
        assert again.returncode == 2
    finally:
        from symbi_jupyter.cluster.processes import stop_all

        stop_all(directory)
        shutil.rmtree(root, ignore_errors=True)


def test_the_head_lost(cluster):
    """Every process of the head killed outright while a kernel cell and a one-shot run
    are on node 2: both calls end with NodeLost saying the head was lost, and node 2
    leaves no container (its agent stops the run and the session, and its reaper
    removes the rest when Ray ends the node)."""
    from symbi_jupyter.cluster.processes import processes_of
    from symbi_jupyter.sandboxes.supervisor.proctree import pid_alive

    node2 = cluster.state["nodes"][1]
    head_dir = cluster.state["nodes"][0]["temp_dir"]
    with cluster_kernel(cluster) as (_, kc):
        msg_id = start(kc, "import time\nprint('running', flush=True)\ntime.sleep(600)")
        wait_for_output(kc, msg_id, "running")
        client = tier1_client(cluster)
        try:
            for pid in processes_of(head_dir):
                os.kill(pid, signal.SIGKILL)
            reply, out = finish(kc, msg_id, TIMEOUT)
            said = client.communicate(timeout=TIMEOUT)[0]
        finally:
            client.kill()
    head = f"the cluster's head ({cluster.address}) was lost: node {cluster.node2}"
    assert reply["status"] == "error" and reply["ename"] == "NodeLost", reply
    assert head in stream(out, "stderr"), stream(out, "stderr")
    lost = f"NodeLost: the cluster at {cluster.address} lost the run on node {cluster.node2}: "
    assert said.startswith(lost + head), said
    # Ray ends node 2 (its raylet, then its agent, whose reaper removes the pool).
    assert wait_until(lambda: not containers_of(node2["agent_pid"]), TIMEOUT)
    assert wait_until(lambda: "raylet" not in programs(node2["temp_dir"]), TIMEOUT)
    assert wait_until(lambda: not pid_alive(node2["agent_pid"]), TIMEOUT)
