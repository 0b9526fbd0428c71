"""symbi-jupyter doctor, setup and image build, run as real commands."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

import pytest

from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.docker import HOST_LABEL, LABEL

from .helpers import need

CLI = [sys.executable, "-m", "symbi_jupyter.cli"]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture
def docker_client():
    orch = SandboxOrchestrator(audit_log_path="")
    availability = orch.sandbox("docker").availability()
    need(availability.ok, availability.reason, tier="docker")
    yield orch.sandbox("docker").client()
    orch.close()


def test_doctor_lists_every_tier_with_fixes():
    out = cli("doctor")
    assert out.returncode == 0
    for name in (
        "None (Native - No Isolation)",
        "Tier1 (Docker)",
        "Tier2 (gVisor)",
        "Tier3 (Firecracker)",
    ):
        assert name in out.stdout
    assert "tier None: refused by policy" in out.stdout
    assert "SYMBIONT_ALLOW_NATIVE_EXECUTION=true" in out.stdout


def test_doctor_names_the_fix_when_the_engine_is_missing():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    out = cli("doctor", env=env)
    assert "Tier1 (Docker)               unavailable" in out.stdout
    assert "symbi-jupyter setup" in out.stdout


def test_doctor_reap_removes_containers_of_dead_kernels(docker_client):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = f"{os.stat('/proc/self/ns/pid').st_ino}-{dead.pid}"
    orphan = docker_client.containers.create(
        "symbi-jupyter/sandbox:bookworm",
        ["sleep", "300"],
        labels={LABEL: "1", HOST_LABEL: tag},
        network_mode="none",
    )
    orphan.start()
    live = docker_client.containers.create(
        "symbi-jupyter/sandbox:bookworm",
        ["sleep", "300"],
        labels={LABEL: "1", HOST_LABEL: f"{tag.split('-')[0]}-1"},
        network_mode="none",
    )
    try:
        out = cli("doctor", "--reap")
        assert out.returncode == 0 and orphan.short_id in out.stdout
        ids = {
            c.id
            for c in docker_client.containers.list(
                all=True, filters={"label": LABEL}, ignore_removed=True
            )
        }
        assert orphan.id not in ids and live.id in ids  # pid 1 is alive: left alone
    finally:
        live.remove(force=True)
        with contextlib.suppress(Exception):
            orphan.remove(force=True)  # normally gone already


def test_setup_without_root_explains_what_to_run(tmp_path):
    need(
        os.geteuid() == 0 and shutil.which("setpriv") is not None,
        "needs root (to drop to nobody) and setpriv",
    )
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, "setup"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert out.returncode == 1
    assert "needs root" in out.stderr and "apt-get install -y docker.io runsc" in out.stderr


def test_setup_is_idempotent(docker_client):
    need(os.geteuid() == 0, "setup needs root")
    out = cli("setup")
    assert out.returncode == 0, out.stderr
    assert "already installed" in out.stdout and "daemon: running" in out.stdout
    assert "image: symbi-jupyter/sandbox:bookworm present" in out.stdout


def test_image_build_from_a_dockerfile(docker_client, tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM symbi-jupyter/sandbox:bookworm\nLABEL symbi.test=yes\n")
    tag = f"symbi-jupyter/test-build:{os.getpid()}"
    try:
        out = cli("image", "build", "--tag", tag, "--dockerfile", str(dockerfile))
        assert out.returncode == 0, out.stderr
        assert "1/2 build" in out.stdout and "2/2 check" in out.stdout
        assert "python 3." in out.stdout
        assert docker_client.images.get(tag).labels.get("symbi.test") == "yes"
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


def test_image_help_documents_the_package_list():
    out = cli("image", "build", "--help")
    assert "python3, procps" in " ".join(out.stdout.split())
