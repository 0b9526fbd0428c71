"""A sealed control plane: code in a sandbox on a node never reaches Ray. Against a
real trial cluster of the project's own `cluster up` on 127.0.0.1 (a head offering
tier None, allowed by its operator, and Tier1; a node offering Tier1 and Tier2), cells
sent through the cluster try to read Ray's token, reach its session directory, its
unix sockets and its ports, signal its processes and read or write their files; each
attempt is printed with what came of it, and none may succeed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from symbi_jupyter.errors import PolicyViolation
from symbi_jupyter.limits import ResourceLimits
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.tiers import SecurityTier

from .cluster_fixtures import Cluster, need_cluster, trial_cluster
from .cluster_fixtures import node_env as _node_env
from .helpers import need
from .test_cluster import CLIENT

#: Run inside the sandbox: each attempt prints ``NAME: REACHED ...`` where it got
#: something, ``NAME: denied (ERROR)`` where the system refused, ``NAME: nothing``
#: where there was nothing to find. Attempts only read, connect, and signal the
#: processes the test names.
ATTACK = r"""
import json, os, signal, socket
P = json.loads(%r)

def attempt(name, fn):
    try:
        got = fn()
    except OSError as exc:
        print(f"{name}: denied ({type(exc).__name__} {exc.errno})", flush=True)
    except Exception as exc:
        print(f"{name}: denied ({type(exc).__name__})", flush=True)
    else:
        print(f"{name}: REACHED {got!r}"[:400] if got else f"{name}: nothing", flush=True)

def read(path):
    with open(path, "rb") as f:
        return f.read(4096)

def ray_vars(items):
    return sorted(k for k, v in items if k.startswith("RAY_") or "TOKEN" in k.upper())

attempt("environment", lambda: ray_vars(os.environ.items()))
def own_environ():
    with open("/proc/self/environ", "rb") as f:
        lines = f.read().split(b"\0")
    return ray_vars((line.partition(b"=")[0].decode(), "") for line in lines if line)
attempt("own environ", own_environ)
for path in P["token_files"]:
    attempt(f"token file {path}", lambda: read(path))
for pid in P["pids"]:
    for what in ("environ", "cmdline"):
        attempt(f"{what} of {pid}", lambda: read(f"/proc/{pid}/{what}"))
def ray_processes():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                line = read(f"/proc/{entry}/cmdline")
            except OSError:
                continue
            if b"ray" in line and int(entry) != os.getpid():
                found.append((entry, line[:80]))
    return found
attempt("a /proc scan", ray_processes)
for path in P["dirs"]:
    attempt(f"list {path}", lambda: os.listdir(path))
for path in P["sockets"]:
    def connect_unix(path=path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            s.connect(path)
            return "connected"
    attempt(f"unix socket {path}", connect_unix)
for host in P["hosts"]:
    for port in P["ports"]:
        def connect_tcp(host=host, port=port):
            with socket.create_connection((host, port), timeout=1):
                return "connected"
        attempt(f"port {host}:{port}", connect_tcp)
for pid in P["signal"]:
    attempt(f"signal 0 to {pid}", lambda: os.kill(pid, 0) or "alive")
    attempt(f"SIGTERM to {pid}", lambda: os.kill(pid, signal.SIGTERM) or "sent")
for path in P["files"]:
    attempt(f"read {path}", lambda: read(path))
    def append(path=path):
        with open(path, "ab"):
            return "opened for writing"
    attempt(f"write {path}", append)
for pid in P["signal"]:
    attempt(f"mem of {pid}", lambda: open(f"/proc/{pid}/mem", "rb").close() or "opened")
def inherited():
    found = []
    for fd in sorted(map(int, os.listdir("/proc/self/fd"))):
        try:
            what = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if fd > 2 and not what.startswith(("/proc/", "pipe:")):
            found.append((fd, what))
    return found
attempt("inherited descriptors", inherited)
print("attacks done", flush=True)
"""


def _ray_pids(root: str) -> dict[str, list[int]]:
    """The cluster's processes by kind: ``raylet``, ``gcs``, ``agent`` (the node
    agents), ``all``."""
    from symbi_jupyter.cluster.processes import processes_of

    found: dict[str, list[int]] = {"raylet": [], "gcs": [], "agent": [], "all": []}
    for pid in sorted(processes_of(root)):
        try:
            proc = psutil.Process(pid)
            name, cmdline = proc.name(), " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if proc.uids().real != os.getuid():
            continue  # a sandbox of a run, not Ray
        found["all"].append(pid)
        if name == "raylet":
            found["raylet"].append(pid)
        elif name == "gcs_server":
            found["gcs"].append(pid)
        elif "NodeAgent" in name or "NodeAgent" in cmdline:
            found["agent"].append(pid)
    return found


def targets(cluster: Cluster) -> dict:
    """What the cells attack: the cluster's token files, directories, unix sockets,
    listening ports (on every address of this machine), processes and files."""
    root = cluster.state["root"]
    pids = _ray_pids(root)
    ports = sorted(
        {
            c.laddr.port
            for c in psutil.net_connections("tcp")
            if c.pid in pids["all"] and c.status == psutil.CONN_LISTEN
        }
    )
    others = (
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family.name == "AF_INET" and not a.address.startswith("127.")
    )
    hosts = ["127.0.0.1", "::1", *sorted(others)]
    dirs, sockets, files = [root], [], []
    for node in cluster.state["nodes"]:
        session = Path(node["temp_dir"], "session_latest").resolve()
        dirs += [node["temp_dir"], str(session), str(session / "sockets"), str(session / "logs")]
        sockets += sorted(str(p) for p in (session / "sockets").iterdir())
        files += [str(next(iter(sorted((session / "logs").glob("raylet*.out")))))]
    token = cluster.token
    return {
        "token_files": [token, "/root/.ray/auth_token", os.path.expanduser("~/.ray/auth_token")],
        "pids": pids["all"],
        "dirs": dirs,
        "sockets": sockets,
        "hosts": hosts,
        "ports": ports,
        "signal": pids["agent"] + pids["raylet"] + pids["gcs"],
        "files": files,
    }


def outcomes(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    need_cluster()
    base = tmp_path_factory.mktemp("seal")
    head_config = base / "head.toml"
    head_config.write_text("[native_execution]\nenabled = true\n")
    (base / "jupyter").mkdir()
    # Both nodes' operators allow the network, so cells may ask for it.
    (base / "jupyter" / "jupyter_symbi_config.py").write_text(
        "c.SandboxOrchestrator.allow_network = True\n"
    )
    args = ("--nodes", "2", "--tiers", "none,docker", "--tiers", "docker,gvisor", "--slots", "1")
    with trial_cluster(base, *args, "--config", str(head_config)) as made:
        yield made


@pytest.fixture
def client(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", cluster.token)
    o = SandboxOrchestrator(
        cluster_address=cluster.address,
        allow_native_execution=True,
        allow_network=True,
        audit_log_path=str(tmp_path / "audit.jsonl"),
    )
    yield o
    o.close()


@pytest.mark.parametrize("tier", ["none", "tier1", "tier2"])
def test_a_cell_on_a_node_cannot_reach_ray(client, cluster, tier):
    aimed = targets(cluster)
    assert aimed["ports"] and aimed["sockets"] and aimed["signal"]  # the test aims at something
    before = {pid: psutil.Process(pid).create_time() for pid in aimed["signal"]}
    res = client.execute_code(tier, ATTACK % json.dumps(aimed))
    assert res.success, res.stderr
    assert res.stdout.endswith("attacks done\n"), res.stdout[-2000:]
    said = outcomes(res.stdout)
    reached = {name: what for name, what in said.items() if what.startswith("REACHED")}
    assert not reached, json.dumps(reached, indent=1)
    token = Path(cluster.token).read_text().strip()
    assert token not in res.stdout
    # Every attempt was made, and each was refused or found nothing.
    assert said["environment"] == "nothing"
    assert said["own environ"] == "nothing" or said["own environ"].startswith("denied (")
    assert said["inherited descriptors"] == "nothing"
    for path in aimed["token_files"]:
        assert said[f"token file {path}"].startswith("denied ("), path
    for path in aimed["sockets"]:
        assert said[f"unix socket {path}"].startswith("denied ("), path
    for host in aimed["hosts"]:
        for port in aimed["ports"]:
            assert said[f"port {host}:{port}"].startswith("denied ("), (host, port)
    for pid in aimed["signal"]:
        assert said[f"SIGTERM to {pid}"].startswith("denied ("), pid
        # Still the same process, alive.
        assert psutil.Process(pid).create_time() == before[pid]
    for path in aimed["files"]:
        assert said[f"write {path}"].startswith("denied ("), path
    assert res.node  # it ran on a node
    print(res.stdout)


def test_a_cell_with_the_network_on_a_node_cannot_reach_ray(client, cluster):
    """Tier1 with the network: a bridge network reaches this machine's other
    addresses, where the trial cluster's Ray does not listen."""
    aimed = targets(cluster)
    res = client.execute_code(
        "tier1", ATTACK % json.dumps(aimed), limits=ResourceLimits(network=True)
    )
    assert res.success, res.stderr
    said = outcomes(res.stdout)
    reached = {name: what for name, what in said.items() if what.startswith("REACHED")}
    assert not reached, json.dumps(reached, indent=1)
    for host in aimed["hosts"]:
        for port in aimed["ports"]:
            assert said[f"port {host}:{port}"].startswith("denied ("), (host, port)


def test_tier_none_with_the_network_is_refused_on_a_node(client, cluster):
    """Tier None with the network would run in the node's own network namespace, where
    Ray's ports are: the node refuses it, whatever its operator allows."""
    aimed = targets(cluster)
    try:
        res = client.execute_code(
            "none", ATTACK % json.dumps(aimed), limits=ResourceLimits(network=True)
        )
    except PolicyViolation as exc:
        refused = str(exc)
    else:
        said = outcomes(res.stdout)
        reached = {name: what for name, what in said.items() if what.startswith("REACHED")}
        pytest.fail("ran, and reached: " + json.dumps(reached, indent=1))
    assert f"node {cluster.label(0)} refused it" in refused
    assert "network namespace" in refused and "Ray" in refused


PEEK = r"""
import os
for path in %r:
    try:
        got = os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(64)
    except OSError as exc:
        print(f"{path}: denied ({type(exc).__name__})", flush=True)
    else:
        print(f"{path}: REACHED {got!r}"[:300], flush=True)
print("peeked", flush=True)
"""


def _ray_directory(port: int) -> str:
    """The Ray directory of the node whose GCS listens on ``port``, from its command
    line."""
    [gcs] = [
        c.pid
        for c in psutil.net_connections("tcp")
        if c.laddr.port == port and c.status == psutil.CONN_LISTEN
    ]
    for arg in psutil.Process(gcs).cmdline():
        if "/session_" in arg:
            return arg.split("=", 1)[-1].split("/session_")[0]
    raise AssertionError(psutil.Process(gcs).cmdline())


def test_the_directory_of_node_start_is_closed_to_runs(tmp_path):
    """`node start` as on a real machine (Ray's directory chosen by the project): Ray
    opens its directory to every user (0777), its logs 0644; a tier None run of the
    node, with its own uid, reaches none of it."""
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", tier="cluster")
    from symbi_jupyter.cluster import processes

    (tmp_path / "jupyter").mkdir()
    env = _node_env(tmp_path / "state", tmp_path / "jupyter")
    config = tmp_path / "node.toml"
    config.write_text("[native_execution]\nenabled = true\n")
    start = subprocess.run(
        [sys.executable, "-m", "symbi_jupyter.cli", "node", "start", "--port", "0",
         "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--tiers", "none",
         "--slots", "1", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert start.returncode == 0, start.stdout + start.stderr
    address = re.search(r"is up in the cluster at (\S+)", start.stdout)[1]  # type: ignore[index]
    directory = _ray_directory(int(address.rsplit(":", 1)[1]))
    top = Path("/tmp", Path(directory).relative_to("/tmp").parts[0])
    assert top.name.startswith("symbi-ray-")
    try:
        session = Path(directory, "session_latest").resolve()
        aimed = [directory, str(session), str(session / "logs"), str(session / "sockets")]
        aimed += [str(next(iter(sorted((session / "logs").glob("raylet*.out")))))]
        token = str(tmp_path / "state" / "symbi-jupyter" / "cluster" / "auth_token")
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, address, PEEK % aimed],
            env={**env, "RAY_AUTH_TOKEN_PATH": token},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        said = outcomes(client.stdout)
        assert client.stdout.endswith("peeked\n"), client.stdout + client.stderr[-2000:]
        assert [said[path] for path in aimed] == ["denied (PermissionError)"] * len(aimed), said
    finally:
        assert processes.stop_all(directory) == set()
        shutil.rmtree(top, ignore_errors=True)


def _node_start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``node start ARGS``, checked before Ray would start; whatever it started (on
    code that does not check) is stopped again."""
    from symbi_jupyter.cluster import processes

    (tmp_path / "jupyter").mkdir(exist_ok=True)
    env = _node_env(tmp_path / "state", tmp_path / "jupyter")
    try:
        return subprocess.run(
            [sys.executable, "-m", "symbi_jupyter.cli", "node", "start", "--port", "0",
             "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--slots", "1", *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for directory in (tmp_path, *map(Path, args)):
            if directory.is_absolute():
                processes.stop_all(str(directory))


def test_node_start_refuses_a_ray_directory_open_to_others(tmp_path):
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", tier="cluster")
    opened = Path(tempfile.mkdtemp(prefix="symbi-seal-"))
    opened.chmod(0o755)  # /tmp and / above it are open too
    try:
        refused = _node_start(tmp_path, "--tiers", "tier1", "--temp-dir", str(opened / "ray"))
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "no directory above it is closed to other users" in refused.stderr
        assert f"mkdir -m 700 {opened}" in refused.stderr
        assert not (opened / "ray").exists()
    finally:
        shutil.rmtree(opened, ignore_errors=True)


def test_node_start_refuses_to_pass_ray_variables_to_runs(tmp_path):
    need(importlib.util.find_spec("ray") is not None, "Ray is not installed", tier="cluster")
    config = tmp_path / "node.toml"
    config.write_text(
        '[native_execution]\nenabled = true\nenv_passthrough = ["LANG", "RAY_AUTH_TOKEN"]\n'
    )
    closed = Path(tempfile.mkdtemp(prefix="symbi-seal-"))  # short: Ray's socket paths
    try:
        refused = _node_start(
            tmp_path, "--tiers", "none", "--config", str(config), "--temp-dir", str(closed / "ray")
        )
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "env_passthrough names RAY_AUTH_TOKEN" in refused.stderr
        assert not (tmp_path / "state" / "symbi-jupyter" / "cluster").exists()  # no token
    finally:
        shutil.rmtree(closed, ignore_errors=True)


def test_which_runs_may_have_the_network_on_a_node():
    """Without a cluster: the rule the agent applies above, for a node on a routable
    address too (the trial cluster listens on loopback only)."""
    from symbi_jupyter.cluster.agent import network_refusal

    for address in ("127.0.0.1", "10.0.0.7"):
        assert "own network namespace" in str(network_refusal(SecurityTier.NONE, address))
    assert network_refusal(SecurityTier.TIER1, "127.0.0.1") is None
    assert network_refusal(SecurityTier.TIER1, "[::1]") is None
    for tier in (SecurityTier.TIER1, SecurityTier.TIER2):
        said = network_refusal(tier, "10.0.0.7")
        assert said is not None and "reaches this node's address 10.0.0.7" in said
    assert network_refusal(SecurityTier.TIER3, "10.0.0.7") is None  # no network device
