"""Tier1 (Docker) and Tier2 (gVisor) against a real Docker engine."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import pytest

from symbi_jupyter import ConfigError, PolicyViolation, ResourceLimits, SecurityTier
from symbi_jupyter.errors import TierUnavailable
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.policy import validate_volume
from symbi_jupyter.sandboxes.docker import HOST_LABEL, host_tag

from .helpers import leased, need, wait_until

TIERS = [SecurityTier.TIER1, SecurityTier.TIER2]
NAMES = {SecurityTier.TIER1: "docker", SecurityTier.TIER2: "gvisor"}


@pytest.fixture(params=TIERS, ids=lambda t: NAMES[t])
def tier(request, corch) -> SecurityTier:
    availability = corch.sandbox(request.param).availability()
    need(availability.ok, availability.reason, tier=NAMES[request.param])
    return request.param


@pytest.fixture
def corch(audit_path):
    o = SandboxOrchestrator(audit_log_path=str(audit_path))
    yield o
    o.close()


def our_containers(orch) -> list:
    """Containers left once the orchestrator is closed (which removes its pool)."""
    client = orch.sandbox(SecurityTier.TIER1).client()
    orch.close()
    return client.containers.list(
        all=True, filters={"label": f"{HOST_LABEL}={host_tag()}"}, ignore_removed=True
    )


def run(orch, tier, code, **limits):
    return orch.execute_code(tier, code, limits=ResourceLimits(**limits) if limits else None)


def test_hello_and_stats(corch, tier):
    res = run(corch, tier, "print('hello')", max_memory_mb=256)
    assert res.stdout == "hello\n" and res.success and res.tier is tier
    assert res.memory_method == "cgroup" and res.peak_memory_bytes > 1024 * 1024
    assert res.cpu_user_seconds is not None and res.wall_seconds > 0
    assert not our_containers(corch)


def test_cores_above_the_engines_are_lowered_to_them_and_said(corch, tier):
    """The seed's max_cpu_cores = 4.0 where the engine's host has fewer cores: the
    engine would refuse the container ("Range of CPUs is from 0.01 to ..."); the run
    gets the host's cores instead, and says so."""
    cores = corch.sandbox(tier).client().info()["NCPU"]
    corch.max_cpu_cores = 2.0 * cores
    res = run(corch, tier, "print('ran')")
    assert res.success, res.stderr
    assert res.limits.max_cpu_cores == cores
    assert res.enforcement["cpu_cores"] == (
        f"container cgroup (CPU quota), lowered from {2 * cores} to {cores} "
        f"core{'s' if cores > 1 else ''}: the engine's host has {cores}"
    )


def test_runtime_is_what_was_asked(corch, tier):
    """Tier1 runs under the engine's default runtime (runc: this host's own kernel
    answers the code); Tier2 under runsc, gVisor's kernel, never the host's in its
    place. The engine's record of the container and the code's own view both say so."""
    client = corch.sandbox(tier).client()
    info = client.info()
    ours = {"label": [f"{HOST_LABEL}={host_tag()}", f"symbi-jupyter.tier={tier.value}"]}
    runtimes = set()

    def while_it_runs(stream: str, chunk: bytes) -> None:
        # The run's container exists until its result is read (a pooled spare may too).
        for container in client.containers.list(all=True, filters=ours, ignore_removed=True):
            runtimes.add(container.attrs["HostConfig"]["Runtime"])

    res = corch.execute_code(
        tier,
        "uname -r; cat /proc/version; dmesg 2>&1 | head -n 3",
        language="bash",
        on_output=while_it_runs,
    )
    assert res.success, res.stderr
    release, version, *kernel_log = res.stdout.splitlines()
    if tier is SecurityTier.TIER2:
        assert runtimes == {"runsc"}
        assert release != info["KernelVersion"]
        assert any("Starting gVisor" in line for line in kernel_log), res.stdout
    else:
        assert runtimes == {info["DefaultRuntime"]}
        if info["DefaultRuntime"] == "runc":
            assert release == info["KernelVersion"]
            assert not any("gVisor" in line for line in [version, *kernel_log]), res.stdout


@pytest.mark.parametrize(
    ("language", "code", "expected"),
    [
        ("bash", 'echo "$((6*7))"', "42\n"),
        ("sh", "echo sh-ok", "sh-ok\n"),
    ],
)
def test_shells(corch, tier, language, code, expected):
    assert corch.execute_code(tier, code, language=language).stdout == expected


def test_code_with_quotes_and_bytes_arrives_intact(corch, tier):
    code = (
        b"# -*- coding: latin-1 -*-\nimport sys\nprint(ascii('\xe9 \"$(id)\" `x`'), sys.argv[1:])\n"
    )
    assert corch.execute_code(tier, code).stdout == "'\\xe9 \"$(id)\" `x`' []\n"


def test_a_sigkill_with_the_memory_at_its_limit_is_a_memory_kill():
    """Under gVisor its own kernel may kill a process when the sandbox's cgroup is
    full, leaving neither the engine's OOMKilled flag nor an OOM count (about one
    memory bomb in six here): the cgroup's peak at the limit is the evidence then.
    The decision itself, on the evidence a backend gathers:"""
    from symbi_jupyter.sandboxes._evidence import Evidence, killed_by, limits_reached

    limits = ResourceLimits(max_memory_mb=128)
    full = Evidence(exit_code=137, term_signal=9, memory_limit_reached=True)
    assert killed_by(full, limits) == "memory"
    assert limits_reached(full, "memory") == ["memory"]
    assert killed_by(Evidence(exit_code=137, term_signal=9), limits) == "signal"


def test_memory_bomb(corch, tier):
    res = run(
        corch,
        tier,
        "print('start', flush=True)\nx = b'1' * (1024 * 1024 * 1024)",
        max_memory_mb=128,
    )
    assert res.killed_by == "memory" and not res.success
    assert res.stdout == "start\n"


def test_fork_bomb_is_contained(corch, tier):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    res = run(corch, tier, code, max_processes=32, timeout_seconds=5)
    assert res.killed_by in ("timeout", "processes")
    assert not our_containers(corch)


def test_cpu_spin(corch, tier):
    res = run(corch, tier, "while True: pass", max_cpu_seconds=1, timeout_seconds=60)
    assert res.killed_by == "cpu" and not res.timed_out


def test_timeout_kills_a_process_that_ignores_sigterm(corch, tier):
    code = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('partial', flush=True)\ntime.sleep(60)"
    )
    res = run(corch, tier, code, timeout_seconds=2)
    assert res.timed_out and res.killed_by == "timeout"
    assert res.stdout == "partial\n"
    assert not our_containers(corch)


def test_an_interrupt_while_output_is_relayed_stops_the_container(corch, tier):
    """SIGINT lands wherever the host is, here in the output callback: the container
    is still stopped and the partial result kept."""
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")
    seen = []

    def relay(stream: str, chunk: bytes) -> None:
        if not seen:
            seen.append(chunk)
            os.kill(os.getpid(), signal.SIGINT)  # handled before this function returns

    with pytest.raises(KeyboardInterrupt) as err:
        corch.execute_code(
            tier,
            "import time\nprint('running', flush=True)\ntime.sleep(60)",
            limits=ResourceLimits(timeout_seconds=30),
            on_output=relay,
        )
    partial = err.value.args[0]
    assert partial.stdout == "running\n" and partial.term_signal == 9
    assert wait_until(lambda: not our_containers(corch), 30)


def test_output_flood(corch, tier):
    # sys.stdout retries short writes (gVisor returns them on a full pipe; os.write
    # alone would drop the rest, by the program's own doing).
    code = "import sys\nb = b'y' * (1 << 20)\nfor _ in range(30): sys.stdout.buffer.write(b)\n"
    res = run(corch, tier, code, max_output_bytes=1024 * 1024, timeout_seconds=120)
    assert res.success and res.stdout_truncated and res.stdout_bytes == 30 * (1 << 20)
    assert res.stdout.endswith("[output truncated at 1048576 bytes]\n")


def test_no_network(corch, tier):
    code = (
        "import socket\ns = socket.socket(); s.settimeout(3)\n"
        "try:\n    s.connect(('1.1.1.1', 53)); print('connected')\n"
        "except OSError as e:\n    print('blocked')\n"
    )
    assert run(corch, tier, code).stdout == "blocked\n"


def test_network_needs_policy(corch, tier):
    with pytest.raises(PolicyViolation, match="allow_network"):
        run(corch, tier, "print(1)", network=True)


def test_read_only_root_and_non_root_user(corch, tier):
    code = (
        "import os\nprint(os.getuid(), os.getgid())\n"
        "for path in ('/etc/pwned', '/usr/pwned', '/workspace/ok', '/tmp/ok'):\n"
        "    try:\n        open(path, 'w').write('x'); print(path, 'written')\n"
        "    except OSError as e:\n        print(path, 'refused')\n"
    )
    lines = run(corch, tier, code).stdout.splitlines()
    uid, gid = lines[0].split()
    assert uid == gid and leased(uid)
    assert lines[1:] == [
        "/etc/pwned refused",
        "/usr/pwned refused",
        "/workspace/ok written",
        "/tmp/ok written",
    ]


def test_tmp_is_noexec(corch, tier):
    code = "cp /bin/true /tmp/t && chmod +x /tmp/t && /tmp/t && echo ran || echo refused"
    assert corch.execute_code(tier, code, language="bash").stdout.strip().endswith("refused")


def test_no_host_environment_leaks(corch, tier, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    res = corch.execute_code(tier, "import os; print(sorted(os.environ))", env={"MINE": "a=b"})
    assert "AWS_SECRET" not in res.stdout and "'MINE'" in res.stdout


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"A": "x\ny"}, {"A": "nul\x00"}])
def test_bad_environment_is_refused(corch, tier, env):
    with pytest.raises(ConfigError):
        corch.execute_code(tier, "print(1)", env=env)


def test_nothing_left_after_many_runs(corch, tier):
    for i in range(5):
        assert run(corch, tier, f"print({i})").stdout == f"{i}\n"
    assert not our_containers(corch)
    assert not list(Path("/sys/fs/cgroup").glob(f"*/symbi-jupyter-docker/{host_tag()}-*"))


def test_gvisor_on_a_daemon_without_runsc_fails_closed(audit_path, monkeypatch):
    """A real daemon that lacks the runtime: ask for one it does not have."""
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    sandbox = orch.sandbox(SecurityTier.TIER2)
    need(orch.sandbox(SecurityTier.TIER1).availability().ok, "no Docker engine", tier="docker")
    monkeypatch.setattr(type(sandbox), "runtime", "runsc-not-registered")
    with pytest.raises(TierUnavailable, match="does not list the runsc-not-registered runtime"):
        orch.execute_code(SecurityTier.TIER2, "print(1)")
    assert not our_containers(orch)


@pytest.mark.parametrize(
    "spec",
    [
        "/var/run/docker.sock:/s",
        "/run/containerd:/c",
        "/proc:/p",
        "/sys/fs:/s",
        "/boot:/b",
        "/etc:/e",
        "/root/x:/r",
        "/var/lib/docker:/d",
        "/var/lib/kubelet/x:/k",
        "/tmp/../etc:/x",
        "/:/host",
    ],
)
def test_dangerous_volumes_are_refused(spec):
    with pytest.raises(PolicyViolation):
        validate_volume(spec)


def test_volume_forms():
    assert validate_volume("/srv/data:/data") == ("/srv/data", {"bind": "/data", "mode": "ro"})
    assert validate_volume("/srv/data:/data:rw")[1]["mode"] == "rw"
    for bad in ("/srv", "rel:/x", "/srv:/x:rx"):
        with pytest.raises(ConfigError):
            validate_volume(bad)


def test_root_user_is_refused(corch, tier):
    corch.sandbox(tier).user = "0:0"
    with pytest.raises(ConfigError, match="non-root"):
        corch.execute_code(tier, "print(1)")


def test_missing_image_names_the_build_command(corch, tier):
    corch.sandbox(tier).image = "symbi-jupyter/does-not-exist:1"
    with pytest.raises(TierUnavailable, match="symbi-jupyter image build"):
        corch.execute_code(tier, "print(1)")


def test_native_executable_option_is_refused(corch, tier):
    with pytest.raises(ConfigError, match="tier None only"):
        corch.execute_code(tier, "print(1)", executable="/usr/bin/python3")


def test_uses_the_docker_host_variable(corch, tier, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    fresh = SandboxOrchestrator(audit_log_path="")
    with pytest.raises(TierUnavailable, match="no Docker engine answers"):
        fresh.execute_code(tier, "print(1)")
    assert os.environ["DOCKER_HOST"].startswith("unix:///nonexistent")


def test_print_flood_loses_nothing_and_streams(corch, tier):
    """print() of 30 MiB: under PYTHONUNBUFFERED, gVisor's short pipe writes made
    print drop most of it; line buffering keeps every byte."""
    assert (
        corch.execute_code(tier, "import sys; print(sys.stdout.line_buffering)").stdout == "True\n"
    )
    code = "b = 'y' * (1 << 20)\nfor _ in range(30): print(b, end='')\nprint()"
    res = run(corch, tier, code, max_output_bytes=1024 * 1024, timeout_seconds=120)
    assert res.success and res.stdout_bytes == 30 * (1 << 20) + 1


def test_output_streams_line_by_line(corch, tier):
    chunks = []
    code = "import time\nprint('first')\ntime.sleep(1)\nprint('second')"
    res = corch.execute_code(tier, code, on_output=lambda s, b: chunks.append(b))
    assert res.stdout == "first\nsecond\n"
    assert chunks[0] == b"first\n"  # arrived alone, a second before the rest


def test_pool_serves_a_started_container_and_leaves_nothing(corch, tier):
    sandbox = corch.sandbox(tier)
    assert sandbox.pool_size == 1
    first = run(corch, tier, "print('cold')")
    assert first.startup_seconds > 0
    client = sandbox.client()
    mine = {"label": f"{HOST_LABEL}={host_tag()}", "status": "running"}
    assert wait_until(lambda: len(client.containers.list(filters=mine)) == 1)
    second = run(corch, tier, "import os; print(os.getpid() > 0)")
    assert second.startup_seconds == 0.0 and second.stdout == "True\n"
    assert second.peak_memory_bytes and second.memory_method == "cgroup"
    assert not our_containers(corch)


def test_pool_off(corch, tier):
    corch.sandbox(tier).pool_size = 0
    for _ in range(2):
        assert run(corch, tier, "print(1)").startup_seconds > 0
    client = corch.sandbox(tier).client()
    mine = {"label": f"{HOST_LABEL}={host_tag()}", "status": "running"}
    assert not client.containers.list(filters=mine)  # nothing waits in a pool
    assert not our_containers(corch)


KERNEL = """
import sys, time
from symbi_jupyter.orchestrator import SandboxOrchestrator
orch = SandboxOrchestrator(audit_log_path="")
orch.execute_code(sys.argv[1], "print(1)")
print("ready", flush=True)
time.sleep(300)
"""


def test_pooled_container_ends_when_its_kernel_is_killed(corch, tier):
    """A real kernel process with a pooled container is SIGKILLed: the container's
    attach stream closes, its launcher gets EOF and it stops by itself; the next
    kernel's start-up reaps it."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", KERNEL, tier.value], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    client = corch.sandbox(tier).client()
    theirs = {"label": f"{HOST_LABEL}={host_tag().split('-')[0]}-{proc.pid}"}
    assert wait_until(lambda: len(client.containers.list(filters=theirs)) == 1)
    proc.kill()
    proc.wait()
    assert wait_until(lambda: not client.containers.list(filters=theirs))  # none running
    run(corch, tier, "print(1)")  # first use reaps what dead kernels left
    assert not client.containers.list(all=True, filters=theirs)


def test_network_when_policy_allows_it(corch, tier):
    corch.allow_network = True
    res = run(corch, tier, "print(open('/proc/net/dev').read().count(':'))", network=True)
    if tier is SecurityTier.TIER2:
        # This engine registers runsc with --network=none: said, not pretended.
        assert res.enforcement["network"].startswith("none: the engine runs runsc")
    else:
        assert res.enforcement["network"] == "bridge network (allowed by policy)"
        assert int(res.stdout) >= 2  # loopback and the bridge's interface
    quiet = run(corch, tier, "print(open('/proc/net/dev').read().count(':'))")
    assert quiet.enforcement["network"].startswith("none")


def test_switching_tiers_while_a_removal_is_under_way(audit_path):
    """The first run at a tier reaps dead kernels' containers; the previous run's
    container, being removed in the background, must not make that fail."""
    for _ in range(3):
        orch = SandboxOrchestrator(audit_log_path=str(audit_path))
        for tier in TIERS:
            availability = orch.sandbox(tier).availability()
            need(availability.ok, availability.reason, tier=NAMES[tier])
            assert run(orch, tier, "print(1)").stdout == "1\n"
        assert not our_containers(orch)


EXITING_KERNEL = """
import sys
from symbi_jupyter.orchestrator import SandboxOrchestrator
orch = SandboxOrchestrator(audit_log_path="")
print(orch.execute_code(sys.argv[1], "print(1)").stdout, end="")
# no close(): the interpreter exits with a pooled container waiting
"""


def test_pool_goes_with_the_interpreter(corch, tier):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", EXITING_KERNEL, tier.value],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert out == "1\n" and proc.returncode == 0, err
    client = corch.sandbox(tier).client()
    theirs = {"label": f"{HOST_LABEL}={host_tag().split('-')[0]}-{proc.pid}"}
    assert not client.containers.list(all=True, filters=theirs, ignore_removed=True)


def test_volumes_for_one_request_only(corch, tier, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "note.txt").write_text("from the host")
    os.chmod(tmp_path, 0o755)
    os.chmod(shared, 0o755)
    os.chmod(shared / "note.txt", 0o644)
    code = "import os\nprint(open('/mnt/in/note.txt').read() if os.path.exists('/mnt/in') else '-')"
    mounted = corch.execute_code(tier, code, volumes=[f"{shared}:/mnt/in:ro"])
    assert mounted.stdout == "from the host\n", mounted.stderr
    assert corch.execute_code(tier, code).stdout == "-\n"
    with pytest.raises(PolicyViolation):
        corch.execute_code(tier, "pass", volumes=["/etc:/mnt/etc"])
    assert our_containers(corch) == []


def test_tier_none_refuses_a_volume_that_moves_a_directory(orch):
    """Tier None sees host directories where they are: a volume names one as itself."""
    with pytest.raises(ConfigError, match="at their own path"):
        orch.execute_code(SecurityTier.NONE, "pass", volumes=["/tmp:/mnt"])


def test_tier1_and_tier2_in_one_orchestrator_keep_their_own_figures(corch):
    """Each container's figures come from a cgroup that is its own alone: Tier1 and
    Tier2 alternating in one orchestrator (once named from two counters, so the second
    Tier1 run read a gVisor sandbox's group and Tier2 read none) report what each
    reports alone."""
    for tier in TIERS:
        availability = corch.sandbox(tier).availability()
        need(availability.ok, availability.reason, tier=NAMES[tier])
    # Tier2's figures include gVisor's own kernel: far above what runc's process uses.
    code = "import time; time.sleep(0.2); print('ok')"
    alone = {}
    for tier in TIERS:
        solo = SandboxOrchestrator(audit_log_path=corch.audit_log_path)
        try:
            alone[tier] = run(solo, tier, code)
        finally:
            solo.close()
    for _ in range(3):
        for tier in TIERS:
            res = run(corch, tier, code)
            assert res.success and res.stdout == "ok\n"
            assert res.memory_method == "cgroup" and res.peak_memory_bytes, tier
            # Within a factor of three of the tier alone, where the other tier's figure
            # would be several times larger or smaller.
            ratio = res.peak_memory_bytes / alone[tier].peak_memory_bytes
            assert 1 / 3 < ratio < 3, (tier, res.peak_memory_bytes, alone[tier].peak_memory_bytes)


def test_figures_from_a_shared_cgroup_parent_are_said_unavailable(corch):
    """A container's figures are read only from a parent that held it alone: a group
    that appears beside it there (made by this test) makes them unavailable, said so,
    rather than someone else's."""
    sandbox = corch.sandbox(SecurityTier.TIER1)
    need(sandbox.availability().ok, sandbox.availability().reason, tier="docker")
    need(sandbox._measurable(), "the engine's cgroups are not readable here", tier="docker")
    sandbox.pool_size = 0
    base = Path("/sys/fs/cgroup/memory/symbi-jupyter-docker")
    made: list[Path] = []

    def intrude(stream: str, chunk: bytes) -> None:
        for parent in base.glob(f"{host_tag()}-tier1-*"):
            if not made:
                made.append(parent / "intruder")
                made[0].mkdir()

    try:
        res = corch.execute_code(
            SecurityTier.TIER1,
            "import time; print('x', flush=True); time.sleep(0.5)",
            on_output=intrude,
        )
    finally:
        for path in made:
            path.rmdir()
    assert made and res.success
    assert res.peak_memory_bytes is None and res.cpu_user_seconds is None
    assert "held another group" in res.enforcement["measurement"]
    corch.close()
    for path in made:
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # its removal may have failed while the intruder stood
