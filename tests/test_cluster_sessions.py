"""Kernel sessions on a Ray cluster, against a real one on 127.0.0.1 started by the
project's own `symbi-jupyter cluster up`: a head offering Tier1 and a node offering
Tier1 and Tier2, one slot per tier and one CPU each. The symbi kernel runs as a user
starts it, with SYMBIONT_CLUSTER_ADDRESS and the cluster's token. The last test kills
the second node for real (its raylet)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

from symbi_jupyter.cli import main
from symbi_jupyter.errors import TierUnavailable
from symbi_jupyter.orchestrator import SandboxOrchestrator

from .cluster_fixtures import Cluster, need_cluster, trial_cluster
from .helpers import execute_from_cell, finish, start_kernel, wait_until

TIMEOUT = 120

#: Node 2's memory ceiling, below the client's default of 2048 MB.
NODE_MEMORY_MB = 256


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    need_cluster()
    base = tmp_path_factory.mktemp("cluster-sessions")
    node_config = base / "node2.toml"
    node_config.write_text(f"[native_execution]\nmax_memory_mb = {NODE_MEMORY_MB}\n")
    args = ("--nodes", "2", "--tiers", "docker", "--tiers", "docker,gvisor", "--slots", "1")
    args += ("--config", str(base / "head.toml"), "--config", str(node_config))
    (base / "head.toml").write_text("")
    with trial_cluster(base, *args) as made:
        yield made


@pytest.fixture
def client(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", cluster.token)
    o = SandboxOrchestrator(cluster_address=cluster.address, audit_log_path="")
    yield o
    o.close()


@contextlib.contextmanager
def cluster_kernel(cluster: Cluster):
    """A symbi kernel at Tier1 started as a user starts one against the cluster:
    SYMBIONT_CLUSTER_ADDRESS and the token file in its environment. Yields the
    kernel manager and its client; shut down after."""
    prefix = Path(tempfile.mkdtemp(prefix="symbi-ckernel-"))
    assert main(["install-kernel", "--prefix", str(prefix)]) == 0
    (prefix / "config").mkdir()
    env = {
        **cluster.env,
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(prefix / "config"),
        "XDG_STATE_HOME": str(prefix / "state"),  # the client's audit chain, not the nodes'
        "SYMBIONT_CLUSTER_ADDRESS": cluster.address,
        "RAY_AUTH_TOKEN_PATH": cluster.token,
        "SYMBI_KERNEL_TIER": "docker",
    }
    km, kc = start_kernel("symbi", env)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=False)
        shutil.rmtree(prefix, ignore_errors=True)


def start(kc, code: str) -> str:
    return execute_from_cell(kc, code, cell_id=None)


def run(kc, code: str, timeout: float = TIMEOUT) -> tuple[dict, list[dict]]:
    return finish(kc, start(kc, code), timeout)


def wait_for_output(kc, msg_id: str, text: str, timeout: float = TIMEOUT) -> list[dict]:
    """The iopub messages of ``msg_id`` up to the stream that carries ``text``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        seen.append(msg)
        if msg["msg_type"] == "stream" and text in msg["content"]["text"]:
            return seen
    raise AssertionError(f"{text!r} never came: {seen}")


def stream(outputs: list[dict], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def shown(outputs: list[dict]) -> str:
    """The text of every display (the statistics badges among them)."""
    return "".join(
        str(m["content"].get("data", {}).get("text/plain", ""))
        for m in outputs
        if m["msg_type"] in ("display_data", "update_display_data")
    )


def result_text(outputs: list[dict]) -> str:
    return "".join(
        m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"
    )


def short(label: str) -> str:
    """How the badge names a node: ADDRESS/ID shortened to 8."""
    address, _, node_id = label.partition("/")
    return f"on node {address}/{node_id[:8]}"


def container(host: str):
    """The running container whose hostname (its id's start) is ``host``, or None."""
    import docker

    found = docker.from_env().containers.list(filters={"id": host})
    return found[0] if found else None


def agent_info(client: SandboxOrchestrator, node_id: str) -> dict:
    from symbi_jupyter.cluster import NAMESPACE, agent_name

    ray = client._cluster_client().ray()
    return ray.get(ray.get_actor(agent_name(node_id), namespace=NAMESPACE).info.remote())


def test_a_kernel_session_lives_on_a_node(cluster):
    """State between cells, the badge naming the node, a %%symbi cell, completion and
    an interrupt that keeps the state: all through the cluster."""
    with cluster_kernel(cluster) as (km, kc):
        reply, out = run(kc, "x = 41\nimport socket\nprint(socket.gethostname())")
        assert reply["status"] == "ok", reply
        host = stream(out).strip()
        assert container(host) is not None  # the worker's container, on a node
        nodes = [cluster.head, cluster.node2]
        [node] = [n for n in nodes if short(n) in shown(out)]  # the badge says where
        reply, out = run(kc, "x + 1")
        assert reply["status"] == "ok" and result_text(out) == "42"
        assert short(node) in shown(out)
        # Rich display, as the worker on the node publishes it.
        code = "class H:\n    def _repr_html_(self): return '<b>rich</b>'\ndisplay(H())"
        reply, out = run(kc, code)
        assert reply["status"] == "ok", reply
        html = [
            m["content"]["data"].get("text/html") for m in out if m["msg_type"] == "display_data"
        ]
        assert "<b>rich</b>" in html
        # A %%symbi cell: a one-shot run through the cluster, at a tier only node 2 has.
        reply, out = run(kc, "%%symbi --tier gvisor\nprint('hello from a node')")
        assert reply["status"] == "ok", reply
        assert "hello from a node" in stream(out)
        assert short(cluster.node2) in shown(out)
        # Completion from the node's worker: the namespace's own names.
        msg_id = kc.complete("x.bit_l", 7)
        completed = kc.get_shell_msg(timeout=TIMEOUT)
        assert completed["parent_header"]["msg_id"] == msg_id
        assert "x.bit_length" in completed["content"]["matches"]
        # jupyter-resource-usage's request: the node's figures of the worker's sandbox.
        asked = kc.session.msg("usage_request", {})
        kc.control_channel.send(asked)
        usage = kc.get_control_msg(timeout=TIMEOUT)
        assert usage["parent_header"]["msg_id"] == asked["header"]["msg_id"]
        sandbox = usage["content"]["sandbox"]
        assert sandbox["tier"] == "Tier1" and sandbox["memory_bytes"] > 0
        # The interrupt goes to the node; the cell stops there and the state stays.
        msg_id = start(kc, "import time\nprint('sleeping', flush=True)\ntime.sleep(120)")
        wait_for_output(kc, msg_id, "sleeping")
        km.interrupt_kernel()
        reply, out = finish(kc, msg_id, TIMEOUT)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert "interrupted; state kept" in shown(out)
        reply, out = run(kc, "print(x)")
        assert reply["status"] == "ok" and stream(out) == "41\n"
        assert container(host) is not None  # the same worker


def test_a_client_that_goes_away_leaves_no_session_worker(cluster, client):
    """A kernel killed outright: its node closes its session, container and all."""
    with cluster_kernel(cluster) as (km, kc):
        reply, out = run(kc, "import socket\nprint(socket.gethostname())")
        assert reply["status"] == "ok", reply
        host = stream(out).strip()
        assert container(host) is not None
        km.signal_kernel(signal.SIGKILL)  # no shutdown, no goodbye
        assert wait_until(lambda: container(host) is None, 60)
    for node in cluster.state["nodes"]:
        assert agent_info(client, node["node_id"])["sessions"] == 0


def test_a_session_runs_under_the_stricter_policy(cluster, client, tmp_path):
    """The node's lower ceiling holds for a session, and a session asked above it is
    refused by the node, which says so; both audited in the client's chain, and each
    cell too, naming the node's record of it."""
    import json

    from symbi_jupyter.errors import PolicyViolation
    from symbi_jupyter.limits import ResourceLimits

    audit = tmp_path / "audit.jsonl"
    client.audit_log_path = str(audit)
    session = client.open_session("gvisor")  # Tier2: node 2 only
    try:
        assert session.node == cluster.node2
        assert session.limits.max_memory_mb == NODE_MEMORY_MB < client.max_memory_mb
        outcome = session.execute("print('ok')", lambda message: None)
        assert outcome.status == "ok" and outcome.result.node == cluster.node2
    finally:
        session.close()
    started, cell = [json.loads(line) for line in audit.read_text().splitlines()]
    assert started["event"] == "session-start" and started["outcome"] == "started"
    assert started["node"] == cluster.node2 and started["node_audit_hash"]
    assert cell["event"] == "session-cell" and cell["cell"] == 1
    assert cell["node"] == cluster.node2 and cell["cluster"] == cluster.address
    on_node = cluster.node_audit()[cell["node_audit_hash"]]
    assert on_node["event"] == "session-cell" and on_node["cell"] == 1
    assert cell["outcome"] == on_node["outcome"] and cell["wall_seconds"] == on_node["wall_seconds"]
    with pytest.raises(PolicyViolation) as refused:
        client.open_session("gvisor", ResourceLimits(max_memory_mb=512))
    assert f"node {cluster.node2} refused the session" in str(refused.value)
    assert f"ceiling of {NODE_MEMORY_MB}" in str(refused.value)
    record = json.loads(audit.read_text().splitlines()[-1])
    assert record["outcome"] == "refused" and record["node"] == cluster.node2


def test_an_agent_lost_mid_cell(cluster, client):
    """Node 2's agent process killed mid-cell (Ray restarts it, without the session):
    the kernel says the session is lost, naming the node, and its next cell runs."""
    blocker = _session_on(client, cluster.head)
    try:
        with cluster_kernel(cluster) as (_, kc):
            reply, out = run(kc, "import socket\nprint(socket.gethostname())")
            assert reply["status"] == "ok", reply
            assert short(cluster.node2) in shown(out)
            host = stream(out).strip()
            node2 = cluster.state["nodes"][1]["node_id"]
            pid = agent_info(client, node2)["pid"]
            msg_id = start(kc, "import time\nprint('running', flush=True)\ntime.sleep(120)")
            wait_for_output(kc, msg_id, "running")
            os.kill(pid, signal.SIGKILL)
            reply, out = finish(kc, msg_id, TIMEOUT)
            said = stream(out, "stderr")
            assert reply["status"] == "error" and reply["ename"] == "NodeLost"
            assert f"node {cluster.node2}" in said and "state went with it" in said
            # Its container went with the agent (the agent's reaper removed it).
            assert wait_until(lambda: container(host) is None, 60)
            blocker.close()
            reply, out = run(kc, "print('again')", timeout=240)
            assert reply["status"] == "ok" and stream(out) == "again\n"
    finally:
        blocker.close()
    assert wait_until(lambda: agent_info(client, node2)["pid"] != pid, 60)


def _session_on(client: SandboxOrchestrator, label: str):
    """Open Tier1 sessions until one is on node ``label`` (one slot per node: at most
    two); the other is closed."""
    first = client.open_session("docker")
    if first.node == label:
        return first
    second = client.open_session("docker")
    first.close()
    assert second.node == label
    return second


def test_a_node_lost_mid_cell(cluster, client):
    """Last: node 2's raylet is killed while a kernel cell and a one-shot run are on
    it. The kernel says the node and its state are lost and goes on; its next cell
    runs on the head; the one-shot run's error names the node; nothing is left."""
    from symbi_jupyter.cluster.processes import processes_of
    from symbi_jupyter.sandboxes.docker.options import HOST_LABEL, LABEL
    from symbi_jupyter.sandboxes.supervisor.proctree import host_tag

    # The head's Tier1 slot held here: the kernel's session goes to node 2.
    blocker = _session_on(client, cluster.head)
    one_shot: list[BaseException | object] = []
    with cluster_kernel(cluster) as (_, kc):
        reply, out = run(kc, "y = 1\nimport socket\nprint(socket.gethostname())")
        assert reply["status"] == "ok", reply
        assert short(cluster.node2) in shown(out)
        host = stream(out).strip()

        def gvisor() -> None:  # Tier2: node 2 only
            try:
                one_shot.append(
                    client.execute_code("gvisor", "import time\ntime.sleep(120)\nprint('never')")
                )
            except BaseException as exc:
                one_shot.append(exc)

        runner = threading.Thread(target=gvisor)
        runner.start()
        node2_dir = cluster.state["nodes"][1]["temp_dir"]
        node2 = agent_info(client, cluster.state["nodes"][1]["node_id"])
        assert wait_until(lambda: agent_info(client, cluster.state["nodes"][1]["node_id"])["runs"])
        msg_id = start(kc, "import time\nprint('running', flush=True)\ntime.sleep(120)")
        wait_for_output(kc, msg_id, "running")
        [raylet] = [p for p in processes_of(node2_dir) if _program(p) == "raylet"]
        os.kill(raylet, signal.SIGKILL)
        reply, out = finish(kc, msg_id, TIMEOUT)
        said = stream(out, "stderr")
        assert reply["status"] == "error" and reply["ename"] == "NodeLost"
        assert f"node {cluster.node2}" in said and "was lost" in said
        assert "state went with it" in said
        runner.join(timeout=TIMEOUT)
        [error] = one_shot
        assert isinstance(error, TierUnavailable), error
        assert f"on node {cluster.node2}" in str(error)
        blocker.close()  # the head's slot is free again
        # The kernel is alive, and its next cell starts a new session on the head.
        reply, out = run(kc, "print(y if 'y' in dir() else 'fresh')", timeout=240)
        assert reply["status"] == "ok", reply
        assert stream(out) == "fresh\n" and short(cluster.head) in shown(out)
    # Nothing left: the lost session's container, the one-shot run's and node 2's
    # pooled ones (its agent's reaper removed them, though Ray's worker ended by
    # killing its children), and on the surviving head neither a session nor a
    # container of the kernel's.
    assert wait_until(lambda: container(host) is None, 60)
    import docker

    engine = docker.from_env()

    def left_by(pid: int) -> list:
        labels = [LABEL, f"{HOST_LABEL}={host_tag(pid)}"]
        return engine.containers.list(all=True, filters={"label": labels}, ignore_removed=True)

    assert wait_until(lambda: not left_by(node2["pid"]), 60), left_by(node2["pid"])
    head_id = cluster.state["nodes"][0]["node_id"]
    assert wait_until(lambda: agent_info(client, head_id)["sessions"] == 0, 30)
    assert left_by(agent_info(client, head_id)["pid"]) == []


def _program(pid: int) -> str:
    """The file name of the program ``pid`` runs ('' if it is gone)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""
