"""Sandboxes on a Ray cluster, against a real one on 127.0.0.1 started by the project's
own `symbi-jupyter cluster up`: a head offering tier None and Tier1, a node offering
Tier1 and Tier2 under a lower memory ceiling, one CPU each, torn down at the end."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from symbi_jupyter.errors import ConfigError, PolicyViolation, TierUnavailable
from symbi_jupyter.limits import ResourceLimits
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.result import ExecutionResult
from symbi_jupyter.tiers import SecurityTier

from .cluster_fixtures import Cluster, need_cluster, trial_cluster
from .cluster_fixtures import node_env as _node_env
from .helpers import need, run_cell, wait_until

#: The node's memory ceiling, below the client's default of 2048 MB.
NODE_MEMORY_MB = 256


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    need_cluster()
    base = tmp_path_factory.mktemp("cluster")
    head_config = base / "head.toml"
    head_config.write_text("[native_execution]\nenabled = true\n")
    node_config = base / "node2.toml"
    node_config.write_text(f"[native_execution]\nmax_memory_mb = {NODE_MEMORY_MB}\n")
    args = ("--nodes", "2", "--tiers", "none,docker", "--tiers", "docker,gvisor", "--slots", "2")
    with trial_cluster(
        base, *args, "--config", str(head_config), "--config", str(node_config)
    ) as made:
        yield made


@pytest.fixture
def client(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, audit_path: Path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", cluster.token)
    o = SandboxOrchestrator(
        cluster_address=cluster.address,
        allow_native_execution=True,
        audit_log_path=str(audit_path),
    )
    yield o
    o.close()


def last_record(audit_path: Path) -> dict:
    return json.loads(audit_path.read_text().splitlines()[-1])


def test_placement_by_tier_and_res_node(client, cluster, audit_path):
    native = client.execute_code("none", "print('on the head')")
    assert native.success and native.stdout == "on the head\n"
    assert native.node == cluster.head  # the only node offering tier None
    gvisor = client.execute_code("tier2", "print('on node 2')")
    assert gvisor.success and gvisor.stdout == "on node 2\n"
    assert gvisor.node == cluster.node2  # the only node offering Tier2
    docker = client.execute_code("docker", "print(1)")
    assert docker.node in (cluster.head, cluster.node2)
    assert f"on node 127.0.0.1/{gvisor.node.split('/')[1][:8]}" in str(gvisor)
    assert gvisor.to_dict()["node"] == cluster.node2
    # The client's record names the node and the hash of the node's own record.
    record = last_record(audit_path)
    assert record["node"] == docker.node and record["cluster"] == cluster.address
    node_record = cluster.node_audit()[record["node_audit_hash"]]
    assert node_record["code_sha256"] == record["code_sha256"] == docker.code_sha256
    assert node_record["outcome"] == record["outcome"] == "success"


def test_live_output_comes_before_the_result(client, cluster, audit_path):
    """The first line arrives while the run still sleeps: the stop button (SIGINT,
    sent on seeing it) stops the run on its node, whose result has the line and not
    the one after the sleep."""
    seen: list[bytes] = []

    def on_output(name: str, chunk: bytes) -> None:
        seen.append(chunk)
        if b"first" in chunk:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    code = "import time\nprint('first', flush=True)\ntime.sleep(120)\nprint('never')\n"
    with pytest.raises(KeyboardInterrupt) as caught:
        client.execute_code("none", code, on_output=on_output)
    result = caught.value.args[0]
    assert isinstance(result, ExecutionResult)
    assert b"first\n" in b"".join(seen)
    assert "first" in result.stdout and "never" not in result.stdout
    assert result.interrupted == "ended" and result.node == cluster.head
    record = last_record(audit_path)
    assert record["outcome"] == "interrupted"
    assert cluster.node_audit()[record["node_audit_hash"]]["outcome"] == "interrupted"


def test_symbi_magic_runs_on_the_cluster(ip, cluster, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", cluster.token)
    ip.run_line_magic("config", f"SandboxOrchestrator.cluster_address = '{cluster.address}'")
    result, cap = run_cell(ip, "%%symbi --tier gvisor -o r\nprint('hello from a node')")
    assert result.success, result.error_in_exec
    assert cap.stdout.startswith("hello from a node\n")
    assert ip.user_ns["r"].node == cluster.node2
    where = f"on node 127.0.0.1/{cluster.state['nodes'][1]['node_id'][:8]}"
    assert any(where in shown.data.get("text/plain", "") for shown in cap.outputs)


def test_the_stricter_ceiling_holds_and_a_refusal_names_its_side(client, cluster, audit_path):
    # Nothing asked: the lower of the two ceilings, the node's.
    assert client.max_memory_mb > NODE_MEMORY_MB
    res = client.execute_code("tier2", "print(1)")
    assert res.limits.max_memory_mb == NODE_MEMORY_MB
    # A client whose own ceiling is lower still: its own.
    client.max_memory_mb = 128
    assert client.execute_code("tier2", "print(1)").limits.max_memory_mb == 128
    client.max_memory_mb = 2048
    # Above the node's ceiling, within the client's: the node refuses, and says so.
    with pytest.raises(PolicyViolation) as refused:
        client.execute_code("tier2", "print(1)", limits=ResourceLimits(max_memory_mb=512))
    assert f"node {cluster.node2} refused it" in str(refused.value)
    assert f"ceiling of {NODE_MEMORY_MB}" in str(refused.value)
    record = last_record(audit_path)
    assert record["outcome"] == "refused" and record["node"] == cluster.node2
    assert cluster.node_audit()[record["node_audit_hash"]]["outcome"] == "refused"
    # Above the client's own ceiling: refused here, before any node sees it.
    with pytest.raises(PolicyViolation) as mine:
        client.execute_code("tier2", "print(1)", limits=ResourceLimits(max_memory_mb=4096))
    assert "refused by this client's policy" in str(mine.value)
    assert "node_audit_hash" not in last_record(audit_path)


def test_a_tier_no_node_offers_names_what_the_cluster_offers(client, cluster):
    with pytest.raises(TierUnavailable) as missing:
        client.execute_code("tier3", "print(1)")
    said = str(missing.value)
    assert cluster.address in said and "offers Tier3" in said
    assert "None (Native" in said and "Tier1 (Docker) (4 slots)" in said
    assert "Tier2 (gVisor) (2 slots)" in said


def test_a_node_agent_refuses_a_tier_its_node_does_not_offer(client, cluster):
    """Past Ray's placement (a request handed to an agent directly): the node's own
    check still holds."""
    from symbi_jupyter.cluster import NAMESPACE, agent_name

    ray = client._cluster_client().ray()
    node_id = cluster.state["nodes"][1]["node_id"]
    agent = ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    request = {
        "run_id": secrets.token_hex(8),
        "job_id": ray.get_runtime_context().get_job_id(),
        "tier": "None",
        "code": b"print(1)",
        "env": {},
        "language": "python3",
        "limits": None,
        "ceilings": client.ceilings(),
        "first_line": 1,
    }
    events = [e for ref in agent.execute.options(num_returns="streaming").remote(request)
              for e in ray.get(ref)]  # fmt: skip
    assert events[-1][0] == "refused" and events[-1][1] == "TierUnavailable"
    assert f"node {cluster.node2}" in events[-1][2] and "does not offer None" in events[-1][2]


CLIENT = """
import sys
from symbi_jupyter.orchestrator import SandboxOrchestrator
orch = SandboxOrchestrator(cluster_address=sys.argv[1], allow_native_execution=True,
                           audit_log_path="")
try:
    orch.execute_code("none", sys.argv[2],
                      on_output=lambda name, chunk: print(chunk.decode(), end="", flush=True))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}", flush=True)
"""


def _client(cluster: Cluster, code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, cluster.address, code],
        env={**cluster.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_a_client_without_the_token_is_refused(cluster, tmp_path):
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    refused = _client(cluster, "print(1)", RAY_AUTH_TOKEN_PATH=str(wrong))
    said = refused.communicate(timeout=120)[0]
    assert said.startswith("ConfigError: ") and "refused this client's token" in said
    missing = _client(cluster, "print(1)", RAY_AUTH_TOKEN_PATH=str(tmp_path / "none"))
    said = missing.communicate(timeout=120)[0]
    assert said.startswith("ConfigError: no cluster token at ")
    # Ray itself, asked without a token (its own client, token mode off), refuses.
    raw = subprocess.run(
        [
            sys.executable, "-c",
            "import sys, ray._raylet as r\n"
            "try:\n    r.GcsClient(address=sys.argv[1], cluster_id=None)\n"
            "except Exception as exc:\n    print(type(exc).__name__)",
            cluster.address,
        ],
        env={**cluster.env, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert raw.stdout.strip() == "AuthenticationError"
    # With the token, the same client runs.
    allowed = _client(cluster, "print('in')", RAY_AUTH_TOKEN_PATH=cluster.token)
    assert allowed.communicate(timeout=120)[0] == "in\n"


def test_a_tls_client_of_a_cluster_without_tls_is_told_at_once(cluster, tmp_path):
    """RAY_USE_TLS on one side only: said on connecting, where Ray would retry for a
    minute and then say only that the cluster does not answer."""
    from symbi_jupyter.cluster import tls

    files = tls.make_files(tmp_path / "tls")
    told = _client(cluster, "print(1)", RAY_AUTH_TOKEN_PATH=cluster.token, **files)
    said = told.communicate(timeout=120)[0]
    assert said.startswith(f"ConfigError: the cluster at {cluster.address} does not use TLS")
    assert "this client has RAY_USE_TLS=1" in said


def test_a_client_that_goes_away_leaves_no_run(cluster):
    """Killed mid-run, its node stops the sandbox by the stop path: the node's record
    of the run says interrupted, long before the code would have ended."""
    code = f"# {secrets.token_hex(8)}\nimport time\nprint('started', flush=True)\ntime.sleep(120)\n"
    proc = _client(cluster, code, RAY_AUTH_TOKEN_PATH=cluster.token)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    finally:
        proc.kill()
        proc.wait()
    digest = __import__("hashlib").sha256(code.encode()).hexdigest()

    def stopped() -> bool:
        records = cluster.node_audit().values()
        return any(r.get("code_sha256") == digest and r.get("outcome") for r in records)

    assert wait_until(stopped, 60)
    outcome = [r for r in cluster.node_audit().values() if r.get("code_sha256") == digest]
    assert [r["outcome"] for r in outcome] == ["interrupted"]


def test_a_cancelled_task_leaves_no_run(client, cluster):
    """Ray's own cancellation of the task a request became (what the client does on a
    stop before the run has started, or a second stop) reaches the node's agent,
    which stops the sandbox."""
    from symbi_jupyter.cluster import resource_name
    from symbi_jupyter.cluster.agent import run_on_node

    ray = client._cluster_client().ray()
    code = f"# {secrets.token_hex(8)}\nimport time\nprint('started', flush=True)\ntime.sleep(120)\n"
    request = {
        "run_id": secrets.token_hex(8),
        "job_id": ray.get_runtime_context().get_job_id(),
        "tier": "None",
        "code": code.encode(),
        "env": {},
        "language": "python3",
        "limits": None,
        "ceilings": client.ceilings(),
        "first_line": 1,
    }
    task = ray.remote(run_on_node).options(
        num_returns="streaming", num_cpus=0, resources={resource_name(SecurityTier.NONE): 1}
    )
    stream = task.remote(request)
    seen = []
    for ref in stream:
        seen += ray.get(ref)
        if any(e[0] == "output" and b"started" in e[2] for e in seen):
            break
    ray.cancel(stream)
    digest = __import__("hashlib").sha256(code.encode()).hexdigest()

    def ended() -> list[str]:
        return [
            r["outcome"]
            for r in cluster.node_audit().values()
            if r.get("code_sha256") == digest and "outcome" in r
        ]

    assert wait_until(ended, 60)
    assert ended() == ["interrupted"]


def test_an_agent_runs_on_the_cluster_from_the_command_line(cluster, tmp_path):
    """`symbi-jupyter run AGENT_FILE` in a shell whose environment names the cluster:
    the agent's Tier2 action (node 2 only) runs there, its output and statistics line
    as locally, the line naming the node."""
    (tmp_path / "agent.dsl").write_text(
        "agent Probe {\n"
        "  security { tier: Tier2 sandbox: Strict capabilities: [] }\n"
        '  on trigger "go" { run_code("python3", "print(6 * 7)") }\n'
        "}\n"
    )
    env = {
        **cluster.env,
        "SYMBIONT_CLUSTER_ADDRESS": cluster.address,
        "RAY_AUTH_TOKEN_PATH": cluster.token,
    }
    done = subprocess.run(
        [sys.executable, "-m", "symbi_jupyter.cli", "run", "agent.dsl"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n"
    [stats] = [line for line in done.stderr.splitlines() if line.startswith("[symbi]")]
    assert f"on node 127.0.0.1/{cluster.state['nodes'][1]['node_id'][:8]}" in stats, stats


def test_cluster_status_names_each_node_and_its_tiers(cluster):
    shown = cluster.cli("cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"node {cluster.head}: None x2, Tier1 x2" in shown.stdout
    assert f"node {cluster.node2}: Tier1 x2, Tier2 x2; memory ceiling {NODE_MEMORY_MB} MB" in (
        shown.stdout
    )


def test_cluster_down_leaves_no_ray_process_and_no_container(cluster):
    """Last: the module's cluster goes down here (its fixture then finds nothing)."""
    from symbi_jupyter.cluster import rayctl
    from symbi_jupyter.cluster.processes import processes_of
    from symbi_jupyter.sandboxes.docker.options import HOST_LABEL, LABEL
    from symbi_jupyter.sandboxes.supervisor.proctree import host_tag

    owners = {host_tag(n["agent_pid"]) for n in cluster.state["nodes"]}
    rayctl.disconnect()
    down = cluster.cli("cluster", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    root = cluster.state["root"]
    assert processes_of(root) == set()
    pgrep = subprocess.run(["pgrep", "-af", root], capture_output=True, text=True)
    assert pgrep.stdout == ""
    host, port = cluster.address.rsplit(":", 1)
    with pytest.raises(OSError):  # its head's port: nothing listens there any more
        socket.create_connection((host, int(port)), timeout=2).close()
    import docker

    left = docker.from_env().containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    )
    assert not [c.short_id for c in left if c.labels.get(HOST_LABEL) in owners]
    assert not Path(root).exists(), sorted(str(p) for p in Path(root).rglob("*"))[:20]
    assert cluster.cli("cluster", "status").returncode == 1


def test_a_cluster_address_is_checked_where_it_is_set(tmp_path):
    """Needs no cluster: the trait, config.toml's [cluster] address and
    SYMBIONT_CLUSTER_ADDRESS take HOST:PORT only."""
    from symbi_jupyter.config import config_from_environ, load_symbiont_config

    with pytest.raises(ConfigError, match=r"\(ray://\) are not supported"):
        SandboxOrchestrator(cluster_address="ray://head:10001")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config_from_environ({"SYMBIONT_CLUSTER_ADDRESS": "head"})
    cfg = config_from_environ({"SYMBIONT_CLUSTER_ADDRESS": "10.0.0.7:6379"})
    assert SandboxOrchestrator(config=cfg).cluster_address == "10.0.0.7:6379"
    toml = tmp_path / "config.toml"
    toml.write_text('[cluster]\naddress = "head.example:6379"\n')
    assert SandboxOrchestrator(config=load_symbiont_config(toml)).cluster_address == (
        "head.example:6379"
    )
    toml.write_text('[cluster]\naddress = "head"\n')
    with pytest.raises(ConfigError, match=r"\[cluster\] address = 'head' is not valid"):
        load_symbiont_config(toml)


# -- without a cluster -----------------------------------------------------------------


@pytest.mark.parametrize("tier", ["none", "docker"])
def test_a_stop_button_stops_a_run_of_another_thread(orch, tier):
    """What a node's agent stops a run with: a thread's stop button, pressed from
    another thread once the run has printed, ends it as SIGINT ends the main thread's."""
    from symbi_jupyter.sandboxes._sigint import StopButton

    if tier == "docker":
        found = orch.sandbox(SecurityTier.TIER1).availability()
        need(found.ok, found.reason, tier="docker")
    switch = StopButton()
    outcome: list[BaseException | ExecutionResult] = []

    def on_output(name: str, chunk: bytes) -> None:
        if b"first" in chunk:
            switch.press()

    def run() -> None:
        with switch.applied():
            try:
                outcome.append(
                    orch.execute_code(
                        tier,
                        "import time\nprint('first', flush=True)\ntime.sleep(120)\nprint('never')",
                        on_output=on_output,
                    )
                )
            except BaseException as exc:
                outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=90)
    assert not worker.is_alive()
    [stopped] = outcome
    assert isinstance(stopped, KeyboardInterrupt)
    result = stopped.args[0]
    assert isinstance(result, ExecutionResult) and result.interrupted == "ended"
    assert "first" in result.stdout and "never" not in result.stdout


def test_node_start_refuses_a_tier_that_does_not_work_here(tmp_path):
    """Checked before Ray starts: tier None where the operator does not allow native
    execution, and a tier that is no tier."""
    env = _node_env(tmp_path / "state", tmp_path)
    cli = [sys.executable, "-m", "symbi_jupyter.cli", "node", "start", "--port", "0"]
    refused = subprocess.run([*cli, "--tiers", "none"], env=env, capture_output=True, text=True)
    assert refused.returncode == 3, refused.stderr
    assert "None (Native - No Isolation) cannot run on this node" in refused.stderr
    assert "allow_native_execution" in refused.stderr
    bogus = subprocess.run([*cli, "--tiers", "tier9"], env=env, capture_output=True, text=True)
    assert bogus.returncode == 2 and "unknown security tier 'tier9'" in bogus.stderr
    assert not (tmp_path / "state" / "symbi-jupyter" / "cluster").exists()  # no token made


def test_without_ray_a_cluster_names_the_extra(tmp_path):
    """Ray missing, as the import sees it (Ray is installed here, so the subprocess
    hides it: the one fault this file fakes)."""
    code = (
        "import sys\nsys.modules['ray'] = None\n"
        "from symbi_jupyter.orchestrator import SandboxOrchestrator\n"
        "o = SandboxOrchestrator(cluster_address='127.0.0.1:6379', audit_log_path='')\n"
        "try:\n    o.execute_code('tier1', 'print(1)')\n"
        "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    )
    env = _node_env(tmp_path / "state", tmp_path)
    said = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert said.stdout.startswith("TierUnavailable: a cluster needs Ray")
    assert "pip install 'symbi-jupyter[cluster]'" in said.stdout


def test_a_cluster_that_is_not_there_is_said_at_once(tmp_path):
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", tier="cluster")
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = (
        "import sys\nfrom symbi_jupyter.orchestrator import SandboxOrchestrator\n"
        "o = SandboxOrchestrator(cluster_address=sys.argv[1], audit_log_path='')\n"
        "try:\n    o.execute_code('tier1', 'print(1)')\n"
        "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    )
    env = {**_node_env(tmp_path / "state", tmp_path), "RAY_AUTH_TOKEN_PATH": str(token)}
    said = subprocess.run(
        [sys.executable, "-c", code, f"127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert said.stdout.startswith(f"TierUnavailable: no Ray cluster answers at 127.0.0.1:{port}")
