"""What the tests of a trial cluster share: the cluster `symbi-jupyter cluster up`
started (its address, token and state) and the environment its nodes start in."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Cluster:
    address: str
    env: dict[str, str]
    state: dict
    state_dir: Path

    @property
    def token(self) -> str:
        return self.state["token"]

    @property
    def head(self) -> str:
        return self.label(0)

    @property
    def node2(self) -> str:
        return self.label(1)

    def label(self, index: int) -> str:
        return f"127.0.0.1/{self.state['nodes'][index]['node_id']}"

    def node_audit(self) -> dict[str, dict]:
        """The nodes' audit records (their shared state directory), by hash."""
        path = self.state_dir / "symbi-jupyter" / "audit.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return {r["hash"]: r for r in records}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "symbi_jupyter.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def node_env(state_dir: Path, jupyter_dir: Path) -> dict[str, str]:
    """The environment the nodes start in: this checkout's code, no SYMBIONT_* or
    Jupyter configuration of the host's, their own state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYMBIONT_", "RAY_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        XDG_STATE_HOME=str(state_dir),
        JUPYTER_CONFIG_DIR=str(jupyter_dir),
        JUPYTER_CONFIG_PATH="",
    )
    return env


def need_cluster(tiers: tuple[str, ...] = ("docker", "gvisor")) -> None:
    """Skip (or fail, where CI requires the tier) without Ray or a tier of ``tiers``
    (default: Docker and runsc; most trial clusters of the tests offer Tier1 and
    Tier2)."""
    import importlib.util

    from symbi_jupyter.orchestrator import SandboxOrchestrator
    from symbi_jupyter.tiers import SecurityTier

    from .helpers import need

    need(
        importlib.util.find_spec("ray") is not None,
        "Ray is not installed (pip install 'symbi-jupyter[cluster]')",
        tier="cluster",
    )
    probe = SandboxOrchestrator(audit_log_path="")
    try:
        for name in tiers:
            found = probe.sandbox(SecurityTier.parse(name)).availability()
            need(found.ok, found.reason, tier=name)
    finally:
        probe.close()


@contextlib.contextmanager
def trial_cluster(base: Path, *up_args: str) -> Iterator[Cluster]:
    """A cluster of ``cluster up UP_ARGS`` with its state under ``base``, down after;
    the Ray variables connecting set in this process restored."""
    (base / "jupyter").mkdir(exist_ok=True)
    env = node_env(base / "state", base / "jupyter")
    saved = {
        k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_CLIENT_MODE")
    }
    made = Cluster("", env, {}, base / "state")
    up = made.cli("cluster", "up", *up_args)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state_file = base / "state" / "symbi-jupyter" / "cluster" / "local.json"
        made.state = json.loads(state_file.read_text())
        made.address = made.state["address"]
        yield made
    finally:
        from symbi_jupyter.cluster import rayctl

        rayctl.disconnect()
        made.cli("cluster", "down")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
