"""Tier3 against real microVMs: QEMU's microvm machine booting the guest built by
``symbi-jupyter image build --tier3``."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.errors import TierUnavailable
from symbi_jupyter.limits import host_cores
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.base import ExecutionRequest
from symbi_jupyter.sandboxes.microvm import MicroVMSandbox, QEMUDriver
from symbi_jupyter.setup.images.microvm import READY_LINE

from .helpers import need, wait_until

TIER3 = SecurityTier.TIER3


def _qemu_processes() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and b"name=symbi.agent" in cmdline:
                found.append(int(proc.name))
    return found


@pytest.fixture
def vm(audit_path, tmp_path: Path):
    """An orchestrator whose Tier3 runs under TCG (the probe boot is tested apart)."""
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    sandbox = orch.sandbox(TIER3)
    sandbox.acceleration = "tcg"
    sandbox.run_root = str(tmp_path)
    availability = sandbox.availability()
    need(availability.ok, availability.reason, tier="microvm")
    yield orch
    orch.close()
    assert wait_until(lambda: not _qemu_processes(), 30), "a VMM outlived its run"
    assert not list(tmp_path.glob("symbi-vm-*")), "a run directory was left behind"


def run(orch, code, language=None, **limits):
    return orch.execute_code(
        TIER3, code, language=language, limits=ResourceLimits(**limits) if limits else None
    )


def test_hello_in_a_microvm_with_the_hosts_figures(vm) -> None:
    result = run(vm, "import os\nprint('hello from the guest', os.getuid())")
    assert result.success, result.stderr
    assert result.stdout == "hello from the guest 65534\n"
    assert result.tier is TIER3
    # The host's figures are the VMM's (guest and emulation); the guest's are its word.
    assert result.memory_method in ("VMM cgroup", "VMM process")
    assert result.peak_memory_bytes > 16 * 1024 * 1024
    assert result.cpu_user_seconds is not None
    assert result.sandbox_reported["peak_memory_bytes"] > 1024 * 1024
    assert result.startup_seconds > 0  # the boot, apart from the run
    assert result.sandbox_detail == "QEMU microvm · emulated (TCG)"
    assert "Tier3 (QEMU microvm · emulated (TCG))" in str(result)
    if os.access("/sys/fs/cgroup/memory", os.W_OK):  # the VMM's own memory is bounded
        assert result.enforcement["vmm_memory"].startswith("cgroup")


def test_cores_above_the_hosts_are_lowered_to_them_and_said(vm) -> None:
    cores = host_cores()
    vm.max_cpu_cores = 2.0 * cores
    result = run(vm, "import os; print(os.cpu_count())")
    assert result.success, result.stderr
    assert result.stdout == f"{cores}\n"
    assert result.limits.max_cpu_cores == cores
    plural = "s" if cores > 1 else ""
    assert result.enforcement["cpu_cores"] == (
        f"{cores} vCPU{plural}, lowered from {2 * cores} to {cores} core{plural}: "
        f"this host has {cores}"
    )


def test_the_code_never_goes_on_the_kernel_command_line(vm) -> None:
    marker = "symbi-marker-7f3a"
    result = run(vm, f"print(open('/proc/cmdline').read())  # {marker}")
    assert result.success
    assert marker not in result.stdout
    assert "symbi.nproc=" in result.stdout  # the limits do travel there


def test_exit_status_of_the_workload_not_of_the_vmm(vm) -> None:
    assert run(vm, "import sys\nsys.exit(3)").exit_code == 3
    assert run(vm, "echo shell; exit 4", language="bash").exit_code == 4
    failed = run(vm, "raise ValueError('boom')")
    assert failed.exit_code == 1 and "ValueError: boom" in failed.stderr


def test_guest_memory_is_the_limit(vm) -> None:
    result = run(
        vm,
        "b = bytearray(400 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')",
        max_memory_mb=256,
    )
    assert not result.success
    assert result.killed_by == "memory"
    assert "survived" not in result.stdout


def test_a_timeout_destroys_the_vm_and_keeps_the_partial_output(vm) -> None:
    vm.sandbox(TIER3).pool_size = 0  # no VM booted in advance to tell apart
    result = run(vm, "print('before', flush=True)\nwhile True: pass", timeout_seconds=3)
    assert result.timed_out and result.killed_by == "timeout"
    assert result.stdout.startswith("before")
    assert wait_until(lambda: not _qemu_processes(), 30)


def test_processes_are_limited_inside_the_guest(vm) -> None:
    code = (
        "import os\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
        "            import time; time.sleep(30); os._exit(0)\n        n += 1\n"
        "except OSError as e:\n    print('stopped at', n, type(e).__name__)\n"
    )
    result = run(vm, code, max_processes=16, timeout_seconds=60)
    assert "stopped at" in result.stdout
    assert int(result.stdout.split()[2]) < 20


def test_no_network_device(vm) -> None:
    result = run(
        vm,
        "import os, socket\nprint(sorted(os.listdir('/sys/class/net')))\n"
        "try:\n    socket.create_connection(('10.0.2.2', 80), timeout=2)\n"
        "    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)",
    )
    interfaces, connect = result.stdout.splitlines()
    assert interfaces in ("[]", "['lo']")
    assert connect != "connected"


def test_limits_environment_and_filesystems_inside_the_guest(vm) -> None:
    """The limits arrive on the kernel command line as numbers and the init applies
    them; the worker gets a clean environment, the read-only root with writable
    /workspace and /tmp, no new privileges, and a PID 1 that reaps orphans."""
    code = """
import errno, json, os, resource, time
def write(path):
    try:
        open(path, 'w').close(); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def orphan_zombies():
    # A child that forks a grandchild and exits: the grandchild is re-parented to PID 1,
    # which must reap it when it exits.
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            time.sleep(0.2)
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(1)
    stats = []
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            stats.append(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[:2])
        except OSError:
            pass
    return [s for s in stats if s == ['Z', '1']]
r = resource
print(json.dumps({
    'limits': [r.getrlimit(x) for x in (r.RLIMIT_NPROC, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE,
                                        r.RLIMIT_CPU, r.RLIMIT_CORE)],
    'env': dict(os.environ), 'cwd': os.getcwd(), 'cpus': os.cpu_count(),
    'root': write('/x'), 'workspace': write('/workspace/x'), 'tmp': write('/tmp/x'),
    'groups': os.getgroups(), 'gid': os.getgid(),
    'nnp': [l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1],
    'zombies': orphan_zombies(),
}))
"""
    result = run(
        vm,
        code,
        max_cpu_cores=2,
        max_processes=64,
        max_file_size_mb=1,
        max_open_files=100,
        max_cpu_seconds=7,
    )
    assert result.success, result.stderr
    seen = json.loads(result.stdout)
    assert seen["limits"] == [[64, 64], [1048576, 1048576], [100, 100], [7, 8], [0, 0]]
    assert seen["env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/workspace",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    assert seen["cwd"] == "/workspace" and seen["cpus"] == min(2, os.cpu_count())
    assert seen["root"] == "EROFS" and seen["workspace"] == "ok" and seen["tmp"] == "ok"
    assert seen["gid"] == 65534 and seen["groups"] in ([], [65534])
    assert seen["nnp"] == "1"
    assert seen["zombies"] == [], "the init left an orphan unreaped"


def test_the_init_says_ready_and_the_vm_ends_after_shutdown(vm) -> None:
    session = vm.open_session(TIER3)
    handle = session.handle
    try:
        assert READY_LINE in handle.console_tail()
        handle.send(b'{"type": "shutdown"}\n')
        ended = handle.wait(timeout=30)
    finally:
        session.close()
    assert ended is not None, "QEMU should exit on its own"
    assert ended.exit_code == 0 and ended.killed_by is None
    assert "worker exited with status 0" in handle.console_tail()  # kept after the VM


def test_asking_for_network_is_refused_at_tier3(audit_path) -> None:
    orch = SandboxOrchestrator(audit_log_path=str(audit_path), allow_network=True)
    try:
        with pytest.raises(TierUnavailable, match="network"):
            run(orch, "pass", network=True)
    finally:
        orch.close()


def test_a_kernel_session_keeps_state_in_one_vm(vm) -> None:
    session = vm.open_session(TIER3, ResourceLimits(timeout_seconds=60))
    try:
        out: list[dict] = []
        assert session.execute("x = 41", out.append).status == "ok"
        session.execute("print(x + 1)", out.append)
        assert [m["text"] for m in out if m["type"] == "stream"] == ["42\n"]
    finally:
        session.close()


def test_the_probe_boot_decides_the_acceleration(audit_path) -> None:
    orch = SandboxOrchestrator(audit_log_path=str(audit_path))
    try:
        availability = orch.sandbox(TIER3).availability()
        need(availability.ok, availability.reason, tier="microvm")
        accel = availability.details["acceleration"]
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            assert "missing or not accessible" in accel
        # Here /dev/kvm exists but cannot run guests: the probe says so, not a guess.
        assert availability.details["vmm"].startswith("QEMU microvm")
        assert ("KVM" in availability.details["vmm"]) == (accel == "a probe VM booted under KVM")
        if accel.startswith("/dev/kvm exists but"):
            # The VMM's own words say why, not an empty diagnosis.
            assert "no diagnostics" not in accel, accel
    finally:
        orch.close()


def _vmms_tried(reason: str) -> str:
    """The VMMs an unavailable Tier3 tried, and why each failed, from its reason."""
    assert "no usable VMM: " in reason and "; install " in reason, reason
    return reason.split("no usable VMM: ", 1)[1].rsplit("; install ", 1)[0]


def test_firecracker_is_skipped_with_a_precise_reason(tmp_path: Path) -> None:
    """``vmm = 'firecracker'`` where Firecracker cannot run: Tier3 is unavailable, with
    no QEMU put in its place, and the reason names which of its two needs is missing,
    the binary or a KVM that boots guests (in the KVM probe's own words), and the fix.
    'auto' passes over such a Firecracker to QEMU.

    Both faults are real: a binary path with nothing there, and this host's own KVM
    verdict. An executable file stands in for an installed Firecracker: availability
    only looks the binary up, it never runs it."""
    try:
        MicroVMSandbox().manifest()
    except TierUnavailable as exc:
        need(False, str(exc), tier="microvm")
    need(
        shutil.which(MicroVMSandbox().qemu_binary) is not None,
        "no QEMU (its probe boot is the KVM verdict Firecracker needs)",
        tier="microvm",
    )

    # As root Firecracker is refused before these (see the next test); allowed here,
    # so that the reasons below are what a host without root would meet.
    privileged = {"allow_privileged_vmm": True}
    absent = tmp_path / "no-such-firecracker"
    missing = MicroVMSandbox(
        vmm="firecracker", firecracker_binary=str(absent), **privileged
    ).availability()
    assert not missing.ok and not missing.details
    assert _vmms_tried(missing.reason) == f"firecracker ({absent} not found)"
    assert missing.reason.endswith(
        "; install Firecracker on a host with real KVM (VMX/SVM), "
        "or set MicroVMSandbox.vmm = 'qemu'"
    )

    installed = tmp_path / "firecracker"
    installed.write_text("#!/bin/sh\nexit 99\n")
    installed.chmod(0o755)
    # The KVM verdict the QEMU probe boot gives on this host (cached per guest kernel).
    qemu = MicroVMSandbox(vmm="qemu").availability()
    assert qemu.ok, qemu.reason
    kvm = qemu.details["acceleration"]
    kvm_boots = kvm == "a probe VM booted under KVM"
    verdict = MicroVMSandbox(
        vmm="firecracker", firecracker_binary=str(installed), **privileged
    ).availability()
    auto = MicroVMSandbox(firecracker_binary=str(installed), **privileged).availability()
    assert auto.ok, auto.reason
    if kvm_boots:  # a host with real KVM: Firecracker it is
        assert verdict.ok and verdict.details["vmm"] == "Firecracker · KVM"
        assert auto.details["vmm"] == "Firecracker · KVM"
    else:
        assert not verdict.ok
        assert _vmms_tried(verdict.reason) == f"firecracker (needs KVM: {kvm})"
        assert auto.details["vmm"] == "QEMU microvm · emulated (TCG)"
        assert auto.details["acceleration"] == kvm


def test_firecracker_is_not_run_as_root(tmp_path: Path) -> None:
    """Without its jailer Firecracker would run as root with every capability, the
    VMM that Tier3 deprivileges: as root it is refused with the reason and the switch
    that accepts it, before anything is tried, and 'auto' does not pick it. An
    executable file stands in for an installed Firecracker (never run)."""
    need(os.geteuid() == 0, "only a root host would run Firecracker as root")
    installed = tmp_path / "firecracker"
    installed.write_text("#!/bin/sh\nexit 99\n")
    installed.chmod(0o755)
    refused = MicroVMSandbox(vmm="firecracker", firecracker_binary=str(installed)).availability()
    assert not refused.ok
    assert _vmms_tried(refused.reason) == (
        "firecracker (it would run as root with every capability: its jailer is not "
        "supported yet; MicroVMSandbox.allow_privileged_vmm = True accepts that)"
    )
    sandbox = MicroVMSandbox(firecracker_binary=str(installed))
    try:
        sandbox.manifest()
    except TierUnavailable as exc:
        need(False, str(exc), tier="microvm")
    need(shutil.which(sandbox.qemu_binary) is not None, "no QEMU", tier="microvm")
    auto = sandbox.availability()
    assert auto.ok, auto.reason
    assert auto.details["vmm"].startswith("QEMU microvm")


def test_missing_guest_names_the_build_command(tmp_path: Path) -> None:
    sandbox = MicroVMSandbox(artifacts_dir=str(tmp_path / "nothing"))
    availability = sandbox.availability()
    assert not availability.ok
    assert "image build --tier3" in availability.reason


def test_forced_kvm_that_cannot_boot_fails_closed(audit_path, tmp_path: Path) -> None:
    sandbox = MicroVMSandbox(acceleration="kvm", run_root=str(tmp_path))
    try:
        sandbox.manifest()
    except TierUnavailable as exc:
        need(False, str(exc), tier="microvm")
    need(shutil.which(sandbox.qemu_binary) is not None, "no QEMU", tier="microvm")
    availability = sandbox.availability()
    if availability.ok:
        assert "KVM" in availability.details["vmm"]  # a host with real KVM
    else:
        assert "KVM" in availability.reason and "forced" in availability.reason


class _DyingVMM(QEMUDriver):
    """Stands in for a VMM that opens the agent's socket and then dies, as QEMU does
    on a KVM that cannot run the guest (seen in CI). The real QEMU does it only
    sometimes, depending on who is faster; this one does it every time."""

    def command(self, spec) -> list[str]:
        script = (
            "import socket, sys, time\n"
            # The listening socket the host opened for the VMM, as QEMU gets it.
            f"s = socket.socket(fileno={spec.agent_fd})\n"
            "c, _ = s.accept(); time.sleep(0.2); sys.exit(3)\n"
        )
        return [sys.executable, "-c", script]


def test_a_vmm_that_dies_after_opening_its_socket_is_unavailable(tmp_path: Path) -> None:
    sandbox = MicroVMSandbox(run_root=str(tmp_path))
    try:
        manifest = sandbox.manifest()
    except TierUnavailable as exc:
        need(False, str(exc), tier="microvm")
    # More than the socket holds, so sending waits for the reader, which dies.
    request = ExecutionRequest(
        tier=TIER3,
        code=b"#" * (8 << 20),
        language="python",
        limits=ResourceLimits(max_memory_mb=256),
    )
    with pytest.raises(TierUnavailable, match=r"VMM exited while starting \(3"):
        sandbox._boot(_DyingVMM("qemu"), "kvm", manifest, request, timeout=10)
    assert not list(tmp_path.glob("symbi-vm-*")), "a run directory was left behind"
    sandbox.close()


def test_sh_hello_and_environment_in_host_environment_out(vm, monkeypatch) -> None:
    monkeypatch.setenv("SYMBI_HOST_SECRET", "hunter2")
    result = vm.execute_code(
        TIER3, 'echo "hello $GREETING"; env', language="sh", env={"GREETING": "from sh"}
    )
    assert result.success, result.stderr
    assert result.stdout.startswith("hello from sh\n")
    assert "hunter2" not in result.stdout and "SYMBI_HOST_SECRET" not in result.stdout


def test_a_file_written_in_the_guest_stays_there(vm, tmp_path: Path) -> None:
    target = tmp_path / "written-by-the-guest"
    result = run(
        vm,
        f"open({str(target)!r}, 'w').write('x')\n"
        "open('/workspace/ok', 'w').write('y'); print('wrote')",
    )
    # The guest has no such directory: the host path does not exist in there.
    assert "FileNotFoundError" in result.stderr
    assert not target.exists()
    assert run(vm, "open('/workspace/ok', 'w').write('y'); print('wrote')").stdout == "wrote\n"


def test_a_pooled_vm_waits_booted_for_the_next_run(vm) -> None:
    vm.sandbox(TIER3).pool_size = 1
    first = run(vm, "print(1)")
    assert first.startup_seconds > 0
    sandbox = vm.sandbox(TIER3)
    assert wait_until(lambda: any(sandbox._pool._ready.values()), 120)
    second = run(vm, "print(2)")
    assert second.stdout == "2\n"
    assert second.startup_seconds == 0.0  # booted in advance, used once


def test_a_killed_kernel_takes_its_vms_with_it(vm, tmp_path: Path) -> None:
    """kill -9 of the process that started VMs: they die with it (PDEATHSIG), and the
    next start removes what they left."""
    import subprocess
    import sys

    script = (
        "import sys, time\n"
        "from symbi_jupyter.orchestrator import SandboxOrchestrator\n"
        "o = SandboxOrchestrator()\n"
        "s = o.sandbox('tier3'); s.acceleration = 'tcg'; s.run_root = sys.argv[1]\n"
        "session = o.open_session('tier3')\n"
        "print('up', flush=True)\n"
        "time.sleep(300)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "up\n"
        assert _qemu_processes()
        child.kill()
        child.wait()
        assert wait_until(lambda: not _qemu_processes(), 30)
        left = list(tmp_path.glob("symbi-vm-*"))
        assert left  # nobody cleaned up after the dead kernel yet ...
        sandbox = MicroVMSandbox(run_root=str(tmp_path))
        sandbox._reap()  # ... until the next kernel's first use
        assert not list(tmp_path.glob("symbi-vm-*"))
    finally:
        child.kill()


def test_a_vmm_group_is_never_shared(tmp_path: Path) -> None:
    """The VMM's memory group is made new or not at all: a group of that name that
    exists already (another orchestrator's run) is not joined, or its figures and its
    limit would be shared."""
    from symbi_jupyter.sandboxes.supervisor.cgroups import VM_PARENT, v1_memory_group

    need(os.access("/sys/fs/cgroup/memory", os.W_OK), "no writable v1 memory hierarchy")
    name = f"test-{os.getpid()}-{tmp_path.name}"
    first = v1_memory_group(VM_PARENT, name, 64 << 20)
    try:
        assert first is not None
        assert v1_memory_group(VM_PARENT, name, 128 << 20) is None
        limit = Path(first.paths["memory"], "memory.limit_in_bytes").read_text()
        assert int(limit) == 64 << 20  # the second call did not rewrite it
    finally:
        if first:
            first.remove()


def test_a_forged_reply_sets_no_figure_of_a_one_shot_run(vm, audit_path) -> None:
    """The cell touches 150 MB, then writes a reply claiming 1234 bytes to its worker's
    protocol fd: the result and the audit log carry the host's figure."""
    code = (
        "import gc, json, os\n"
        "block = bytearray(150 << 20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "w = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker')\n"
        "forged = {'status': 'ok', 'peak_memory_bytes': 1234, 'cpu_user_seconds': 1e-6,"
        " 'cpu_system_seconds': 0.0}\n"
        "os.write(w.proto_out, (json.dumps({'id': w.current_id, 'type': 'reply',"
        " 'content': forged}) + '\\n').encode())\n"
        "import time; time.sleep(2)\n"
    )
    result = run(vm, code, max_memory_mb=512)
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 150 << 20
    assert result.sandbox_reported["peak_memory_bytes"] == 1234  # its word, kept apart
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    (record,) = [r for r in records if "exit_code" in r]
    assert record["peak_memory_bytes"] == result.peak_memory_bytes
    assert "1234" not in json.dumps(record)
