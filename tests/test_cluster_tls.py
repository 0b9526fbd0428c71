"""TLS on Ray's gRPC channels, against a real trial cluster of `symbi-jupyter cluster up
--tls` on 127.0.0.1: a head offering tier None and Tier1, a node offering Tier1, its
certificates made by the project with openssl; torn down at the end. Its clients run
in processes of their own, so that this process's Ray never connects with TLS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from symbi_jupyter.cluster import tls

from .cluster_fixtures import Cluster, need_cluster, node_env, trial_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    need_cluster()
    base = tmp_path_factory.mktemp("tls-cluster")
    config = base / "native.toml"
    config.write_text("[native_execution]\nenabled = true\n")
    args = ("--nodes", "2", "--tls", "--tiers", "none,docker", "--tiers", "docker")
    with trial_cluster(base, *args, "--slots", "1", "--config", str(config)) as made:
        yield made


# Ray is imported before the TLS variables are set, as in a notebook that sets them
# with %env after its first import: Ray reads them when the client connects.
CLIENT = """
import json, os, sys
import ray
from symbi_jupyter.orchestrator import SandboxOrchestrator
os.environ.update(json.loads(sys.argv[2]))
orch = SandboxOrchestrator(cluster_address=sys.argv[1], allow_native_execution=True,
                           audit_log_path="")
try:
    res = orch.execute_code(sys.argv[3], sys.argv[4])
    print(json.dumps({"stdout": res.stdout, "success": res.success, "node": res.node}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


def run_client(cluster: Cluster, tier: str, code: str, tls_env: dict[str, str]) -> dict:
    ran = subprocess.run(
        [sys.executable, "-c", CLIENT, cluster.address, json.dumps(tls_env), tier, code],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.stdout.strip(), ran.stderr[-2000:]
    return json.loads(ran.stdout.strip().splitlines()[-1])


def test_a_tier1_cell_runs_through_the_tls_cluster(cluster):
    res = run_client(cluster, "docker", "print('over TLS')", cluster.state["tls"])
    assert res.get("success"), res
    assert res["stdout"] == "over TLS\n"
    assert res["node"] in (cluster.head, cluster.node2)
    # The head's port speaks TLS, with the certificate `cluster up` made for 127.0.0.1.
    files = cluster.state["tls"]
    context = ssl.create_default_context(cafile=files[tls.CA_ENV])
    context.load_cert_chain(files[tls.CERT_ENV], files[tls.KEY_ENV])
    host, port = cluster.address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        assert ("IP Address", "127.0.0.1") in conn.getpeercert()["subjectAltName"]
    # `cluster status` connects with the files its state records.
    shown = cluster.cli("cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert f"node {cluster.head}: None x1, Tier1 x1" in shown.stdout


def test_a_client_without_tls_is_refused(cluster, tmp_path):
    """Same token, no TLS: refused at once, saying what to set."""
    plain = run_client(cluster, "docker", "print(1)", {})
    assert plain["error"].startswith(
        f"ConfigError: the cluster at {cluster.address} uses TLS on its gRPC channels, "
        "and this client does not: set RAY_USE_TLS=1"
    )
    # Files of another CA: the cluster's certificate is not trusted, nor is the
    # client's by the cluster.
    other = tls.make_files(tmp_path / "other")
    mine = cluster.state["tls"]
    untrusted = run_client(cluster, "docker", "print(1)", {**mine, tls.CA_ENV: other[tls.CA_ENV]})
    assert "presented a certificate that RAY_TLS_CA_CERT" in untrusted["error"]
    stranger = {**other, tls.CA_ENV: mine[tls.CA_ENV]}
    refused = run_client(cluster, "docker", "print(1)", stranger)
    assert f"refused this client's TLS certificate {other[tls.CERT_ENV]}" in refused["error"]


def test_the_key_is_0600_in_a_0700_directory(cluster):
    files = cluster.state["tls"]
    key = Path(files[tls.KEY_ENV])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.parent == Path(cluster.token).parent  # the token's own directory
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert all(Path(files[name]).parent == key.parent for name in tls.FILE_ENVS)
    # The CA's key is gone once it signed: the server key is the only key there.
    assert sorted(p.name for p in key.parent.glob("*.key")) == [key.name]


@pytest.mark.parametrize("tier", ["none", "docker"])
def test_a_sandboxed_cell_cannot_read_the_key(cluster, tier):
    key = cluster.state["tls"][tls.KEY_ENV]
    code = (
        "import os\n"
        "print(sorted(k for k in os.environ if k.startswith('RAY_')))\n"
        "try:\n"
        f"    print('READ', open({key!r}).read())\n"
        "except OSError as exc:\n"
        "    print('DENIED', type(exc).__name__)\n"
    )
    res = run_client(cluster, tier, code, cluster.state["tls"])
    assert res.get("success"), res
    assert res["stdout"].splitlines()[0] == "[]"  # not even the key's path
    # Tier None: its own uid meets the 0700 directory; Tier1: no host path at all.
    denied = "PermissionError" if tier == "none" else "FileNotFoundError"
    assert res["stdout"].splitlines()[1] == f"DENIED {denied}"
    assert "PRIVATE KEY" not in res["stdout"]
    if tier == "none":
        assert res["node"] == cluster.head  # the only node offering tier None


def test_node_stop_reaches_the_agent_over_tls_from_a_shell_without_it(cluster):
    """`node stop` in a shell with no RAY_TLS_* (the node's environment here) still
    asks node 2's agent to shut down, over TLS: the cluster recorded its files."""
    from symbi_jupyter.cluster.processes import processes_of

    assert not any(k.startswith("RAY_") for k in cluster.env)
    node2 = cluster.state["nodes"][1]
    stopped = cluster.cli("node", "stop", "--temp-dir", node2["temp_dir"])
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert ": its agent, then" in stopped.stdout, stopped.stdout
    assert processes_of(node2["temp_dir"]) == set()


def test_cluster_down_leaves_no_tls_file_and_no_ray_process(cluster):
    """Last: the module's cluster goes down here (its fixture then finds nothing)."""
    from symbi_jupyter.cluster.processes import processes_of

    files = [Path(cluster.state["tls"][name]) for name in tls.FILE_ENVS]
    assert all(f.exists() for f in files)
    down = cluster.cli("cluster", "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_of(cluster.state["root"]) == set()
    assert [str(f) for f in files if f.exists()] == []
    assert not (cluster.state_dir / "symbi-jupyter" / "cluster" / "local.json").exists()
    host, port = cluster.address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


# -- without a cluster -----------------------------------------------------------------


def test_node_start_refuses_a_key_others_can_read(tmp_path):
    """Checked before anything else: the tier asked for (None, which this node does
    not allow) would be refused after it, and no token is made."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    files = tls.make_files(tmp_path / "tls")
    key = Path(files[tls.KEY_ENV])
    env = {**node_env(tmp_path / "state", tmp_path), **files}
    cli = [sys.executable, "-m", "symbi_jupyter.cli", "node", "start", "--port", "0"]
    key.chmod(0o644)
    readable = subprocess.run([*cli, "--tiers", "none"], env=env, capture_output=True, text=True)
    assert readable.returncode == 2, readable.stderr
    assert f"TLS key {key} (RAY_TLS_SERVER_KEY) is open to other users (mode 644)" in (
        readable.stderr
    )
    assert f"chmod 600 {key}" in readable.stderr
    key.chmod(0o600)
    key.parent.chmod(0o777)
    replaceable = subprocess.run([*cli, "--tiers", "none"], env=env, capture_output=True, text=True)
    assert replaceable.returncode == 2, replaceable.stderr
    assert f"chmod go-w {key.parent}" in replaceable.stderr
    key.parent.chmod(0o700)
    half = {k: v for k, v in env.items() if k != tls.CA_ENV}
    missing = subprocess.run([*cli, "--tiers", "none"], env=half, capture_output=True, text=True)
    assert missing.returncode == 2 and "RAY_TLS_CA_CERT not set" in missing.stderr
    assert not (tmp_path / "state" / "symbi-jupyter" / "cluster").exists()


def test_cluster_up_tls_without_openssl_names_the_package(tmp_path):
    """openssl missing from PATH (a real PATH without it): refused, nothing left."""
    env = {**node_env(tmp_path / "state", tmp_path), "PATH": str(tmp_path / "empty")}
    up = subprocess.run(
        [sys.executable, "-m", "symbi_jupyter.cli", "cluster", "up", "--nodes", "1", "--tls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 2, up.stdout + up.stderr
    assert "the openssl command, which is not installed here" in up.stderr
    assert "apt-get install openssl" in up.stderr
    state = tmp_path / "state" / "symbi-jupyter" / "cluster"
    assert sorted(p.name for p in state.iterdir()) == ["auth_token"]
    assert not os.path.exists(state / "local.json")
