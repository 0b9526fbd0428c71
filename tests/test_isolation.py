"""Tenant isolation: attacks run from inside real sandboxes against other runs and
root's files. Every target is a file or process this test made; each attack is
bounded in time and reports what it reached, and the test asserts it reached nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.sandboxes.docker import HOST_LABEL
from symbi_jupyter.sandboxes.supervisor import seccomp
from symbi_jupyter.sandboxes.supervisor.proctree import host_tag

from .helpers import leased, need, wait_until

NONE = SecurityTier.NONE

# Swaps each victim's code file for a link to the target while root prepares the
# victim's run. The victims' run directories are named to it through a file the test
# (root) writes (a run could also find them in /proc, or guess): the test gives the
# attacker every advantage and asserts it still gets nothing.
CHOWN_RACE = r"""
import os, time
feed, target, seconds = os.environ["ATTACK"].split("|")
deadline = time.monotonic() + float(seconds)
swapped, dirs, refreshed = set(), [], 0.0
while time.monotonic() < deadline:
    if time.monotonic() - refreshed > 0.02:
        refreshed = time.monotonic()
        try:
            dirs = [d for d in open(feed).read().split() if d not in swapped]
        except OSError:
            dirs = []
    # Spin on every directory not yet taken: the first write that succeeds is the
    # moment root made the directory ours, before it changed the code file's owner.
    for run_dir in dirs:
        link = run_dir + "/.link"
        try:
            os.symlink(target, link)
        except FileExistsError:
            pass
        except OSError:
            continue
        try:
            os.rename(link, run_dir + "/cell.py")
            swapped.add(run_dir)
        except OSError:
            pass
    dirs = [d for d in dirs if d not in swapped]
print("swaps", len(swapped))
"""


@pytest.fixture
def root_only():
    need(os.geteuid() == 0, "the run user is dropped to only when the host is root")


def _feed_run_dirs(workdir: Path, feed: Path, stop: threading.Event) -> None:
    """Root lists the working directory (which the run user cannot) and tells the
    attacker every run directory it sees."""
    known: set[str] = set()
    while not stop.is_set():
        try:
            names = {str(p) for p in workdir.iterdir() if p.name.startswith("run-")}
        except OSError:
            names = set()
        if names - known:
            known |= names
            tmp = feed.with_suffix(".tmp")
            tmp.write_text("\n".join(sorted(known)))
            tmp.chmod(0o644)
            tmp.replace(feed)
        time.sleep(0.0005)


def test_root_never_hands_a_planted_link_to_the_run_user(orch, workdir, root_only):
    """Finding 1 of the isolation review: root chowned ``cell.py`` by path after the
    run directory was already the run user's, so another run could swap it for a
    link to any root file and be given that file."""
    orch.audit_log_path = ""  # more victim runs in the time: an fsync less each
    target = workdir / "root-secret"
    target.write_text("root's own\n")
    target.chmod(0o600)
    feed = workdir / "feed"
    seconds = 25
    stop = threading.Event()
    feeder = threading.Thread(target=_feed_run_dirs, args=(workdir, feed, stop), daemon=True)
    feeder.start()
    attack: dict[str, object] = {}

    def attacker() -> None:
        attack["result"] = orch.execute_code(
            NONE,
            CHOWN_RACE,
            env={"ATTACK": f"{feed}|{target}|{seconds}"},
            limits=ResourceLimits(timeout_seconds=seconds + 30),
        )

    thread = threading.Thread(target=attacker)
    thread.start()
    victims = 0
    try:
        deadline = time.monotonic() + seconds - 2
        while time.monotonic() < deadline and victims < 500 and target.stat().st_uid == 0:
            orch.execute_code(NONE, "pass")
            victims += 1
    finally:
        thread.join()
        stop.set()
        feeder.join()
    res = attack["result"]
    assert res.stdout.startswith("swaps "), res.stderr
    assert victims >= 10  # the attack had runs to aim at
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600), (
        f"the attacker was handed {target} after {victims} victim runs ({res.stdout.strip()})"
    )
    assert target.read_text() == "root's own\n"


# Tries everything one process of another uid should not manage against ``pid``; prints
# what each attempt gave ("reached", or the errno: not True, which equals EPERM).
REACH = r"""
import ctypes, json, os
pid, root_file = int(os.environ["PID"]), os.environ.get("ROOT_FILE")
plant_dir = os.environ.get("PLANT_DIR")
got = {}
def attempt(name, fn):
    try:
        fn()
        got[name] = "reached"
    except OSError as exc:
        got[name] = exc.errno
attempt("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("signal", lambda: os.kill(pid, 0))
libc = ctypes.CDLL(None, use_errno=True)
if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
    got["ptrace"] = "reached"
    os.waitpid(pid, 0x40000000)  # __WALL: until it has stopped for us
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH, and it goes on
else:
    got["ptrace"] = ctypes.get_errno()
if root_file:
    attempt("root", lambda: open(f"/proc/{pid}/root{root_file}", "a").close())
if plant_dir:
    attempt("plant", lambda: open(os.path.join(plant_dir, "json.py"), "w").close())
print(json.dumps(got))
"""

# A run that says who it is, then waits (holding a secret) until the test lets it go.
VICTIM = r"""
import os, time
print(os.getpid(), os.getcwd(), flush=True)
while not os.path.exists(os.environ["RELEASE"]):
    time.sleep(0.02)
"""


def _reach(orch, pid: int, **env: str) -> dict:
    res = orch.execute_code(NONE, REACH, env={"PID": str(pid), **env})
    assert res.success, res.stderr
    return json.loads(res.stdout)


def test_a_native_run_cannot_reach_another(orch, workdir, root_only):
    """Finding 2: every native run was ``nobody``, so one could read another's
    environment (its secrets), trace it, signal it and plant a module in its
    directory. Each run now has a uid of its own."""
    # The host makes the release file during the run: where the run sees it live.
    spool = workdir.parent / f"{workdir.name}-spool"
    spool.mkdir(mode=0o755)
    release = spool / "release"
    said: list[bytes] = []
    victim: dict[str, object] = {}

    def run_victim() -> None:
        victim["result"] = orch.execute_code(
            NONE,
            VICTIM,
            env={"RELEASE": str(release), "SECRET": "s3cr3t"},
            on_output=lambda stream, data: said.append(data),
            limits=ResourceLimits(timeout_seconds=60),
            volumes=[f"{spool}:{spool}:ro"],
        )

    thread = threading.Thread(target=run_victim)
    thread.start()
    try:
        assert wait_until(lambda: b"\n" in b"".join(said))
        pid, cwd = b"".join(said).decode().split()
        got = _reach(orch, int(pid), PLANT_DIR=cwd)
    finally:
        release.touch()
        thread.join()
        shutil.rmtree(spool)
    assert victim["result"].success
    # The other run's /proc entries are hidden (ENOENT) or closed (EACCES).
    assert got.pop("environ") in (errno.EACCES, errno.ENOENT), got
    # Its directory is closed to other uids, or (on its own tmpfs) not there at all.
    assert got.pop("plant") in (errno.EACCES, errno.ENOENT), got
    assert got == {"signal": errno.EPERM, "ptrace": errno.EPERM}, got


def _running_container(client, tier_value: str):
    for container in client.containers.list(filters={"label": "symbi-jupyter"}):
        if container.labels.get("symbi-jupyter.tier") == tier_value:
            return container
    return None


@pytest.mark.parametrize("tier", ["docker", "gvisor"])
def test_a_native_run_cannot_reach_a_pooled_container(orch, root_only, tier):
    """Finding 2: a native run and the containers shared uid 65534, so a native run
    could open a waiting pooled container's files through /proc/<pid>/root (planting
    code the next cell runs), read its environment, and kill gVisor's sandbox."""
    chosen = SecurityTier.parse(tier)
    availability = orch.sandbox(chosen).availability()
    need(availability.ok, availability.reason, tier=tier)
    assert orch.execute_code(chosen, "print(1)").success  # leaves one waiting in the pool
    client = orch.sandbox(chosen).client()
    assert wait_until(lambda: _running_container(client, chosen.value) is not None)
    container = _running_container(client, chosen.value)
    pids = [int(p[1]) for p in container.top(ps_args="-o user,pid")["Processes"]]
    if chosen is SecurityTier.TIER2:
        # gVisor's processes live in its own kernel; on the host it is runsc's sandbox.
        pids = [int(pid) for pid in _runsc_sandbox_pids(container.id)]
    assert pids
    for pid in pids:
        got = _reach(orch, pid, ROOT_FILE="/workspace/.symbi/sitecustomize.py")
        assert {got.pop("environ"), got.pop("root")} <= {errno.EACCES, errno.ENOENT}, got
        assert got == {"signal": errno.EPERM, "ptrace": errno.EPERM}, (pid, got)


def _runsc_sandbox_pids(container_id: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"runsc-sandbox") and container_id.encode() in b" ".join(argv):
                found.append(cmdline.parent.name)
    return found


def _seccomp(pid: int) -> str | None:
    """The Seccomp field of a process's status; None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^Seccomp:\s*(\d+)", status, re.M)
    return found.group(1) if found else None


def _vmm_children() -> list[int]:
    """QEMU processes this test process started (the pool's booted VM among them)."""
    found = []
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().startswith("qemu-system"):
                    found.append(int(pid))
    return found


def test_the_vmm_runs_deprivileged(orch, root_only):
    """Finding 3: QEMU ran as root with every capability and no seccomp, so a guest
    escape into the emulator was host root. It now runs as a uid of its own, with no
    capabilities, no new privileges and QEMU's seccomp sandbox."""
    availability = orch.sandbox(SecurityTier.TIER3).availability()
    need(availability.ok, availability.reason, tier="microvm")
    res = orch.execute_code(
        SecurityTier.TIER3, "print(1)", limits=ResourceLimits(max_memory_mb=256)
    )
    assert res.success, res.stderr
    assert "of its own" in res.enforcement["vmm_privileges"]
    assert wait_until(lambda: bool(_vmm_children()))  # the pooled VM, booted for the next
    # QEMU enters its seccomp sandbox early in its start, not at exec: a VMM seen in
    # that first moment (on a loaded machine) has not yet.
    assert wait_until(lambda: all(_seccomp(pid) != "0" for pid in _vmm_children()))
    for pid in _vmm_children():
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        uids = set(status["Uid"].split())
        assert len(uids) == 1 and leased(uids.pop()), status["Uid"]
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["Seccomp"].strip() == "2" and status["NoNewPrivs"].strip() == "1"


HOST_THAT_DIES = r"""
import sys, threading
from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.orchestrator import SandboxOrchestrator
orch = SandboxOrchestrator(audit_log_path="")
tier = SecurityTier.parse(sys.argv[1])
orch.execute_code(tier, "print(1)")  # leaves one started container in the pool
threading.Thread(target=orch.execute_code, daemon=True, args=(
    tier, "import time\nprint('running', flush=True)\ntime.sleep(120)"),
    kwargs={"limits": ResourceLimits(timeout_seconds=100)}).start()
print("up", flush=True)
threading.Event().wait()
"""


@pytest.mark.parametrize("tier", ["docker", "gvisor"])
def test_containers_go_with_a_host_killed_outright(tier, tmp_path, root_only):
    """Finding 4: after kill -9 of the host, its gVisor container ran on past its time
    limit and its pooled container stayed, until another host started. The host's
    reaper removes both at once."""
    import docker as docker_sdk

    from symbi_jupyter.orchestrator import SandboxOrchestrator

    chosen = SecurityTier.parse(tier)
    availability = SandboxOrchestrator().sandbox(chosen).availability()
    need(availability.ok, availability.reason, tier=tier)
    child = subprocess.Popen(
        [sys.executable, "-c", HOST_THAT_DIES, tier], stdout=subprocess.PIPE, text=True
    )
    client = docker_sdk.from_env()
    label = f"{HOST_LABEL}={host_tag(child.pid)}"

    def containers() -> list:
        return client.containers.list(all=True, filters={"label": label}, ignore_removed=True)

    try:
        assert child.stdout.readline() == "up\n"
        # The pooled one, and the one whose code now sleeps.
        assert wait_until(lambda: len([c for c in containers() if c.status == "running"]) >= 2)
        child.kill()
        child.wait()
        assert wait_until(lambda: not containers(), 30), [c.status for c in containers()]
    finally:
        child.kill()
        for container in containers():
            container.remove(force=True)


KERNEL_SURFACE = r"""
import ctypes, json, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return "allowed" if result >= 0 else ctypes.get_errno()
got = {
    "user namespace": errno_of(libc.unshare(0x10000000)),
    "ptrace": errno_of(libc.ptrace(0, 0, 0, 0)),  # PTRACE_TRACEME
    "bpf": errno_of(libc.syscall(321, 0, 0, 0)),
    "keyring": errno_of(libc.syscall(250, 0, 0, 0, 0)),  # keyctl
    "io_uring": errno_of(libc.syscall(425, 1, 0)),
}
# What a run does need still works: threads and child processes.
thread = threading.Thread(target=lambda: None)
thread.start()
thread.join()
got["child"] = subprocess.run(["sh", "-c", "echo ok"], capture_output=True, text=True).stdout
print(json.dumps(got))
"""


@pytest.mark.parametrize("usual", [True, False], ids=["started-interpreter", "fresh"])
def test_a_native_run_gets_no_new_kernel_surface(orch, usual):
    """Finding 5: ``unshare -Urn`` worked inside a native run (a user namespace, and
    the kernel attack surface behind it, which no run needs). A seccomp filter now
    refuses it and a few other calls, on both ways a run starts."""
    need(seccomp.supported(), "the seccomp filter is for x86-64 only")
    res = orch.execute_code(NONE, KERNEL_SURFACE, env={} if usual else {"FRESH": "1"})
    assert res.success, res.stderr
    assert (res.startup_seconds == 0.0) == usual  # both starts were tried
    assert json.loads(res.stdout) == {
        "user namespace": errno.EPERM,
        "ptrace": errno.EPERM,
        "bpf": errno.EPERM,
        "keyring": errno.EPERM,
        "io_uring": errno.EPERM,
        "child": "ok\n",
    }
    assert res.enforcement["syscalls"].startswith("seccomp")


LEAVES_TRACES = r"""
import os
for path in ("/dev/shm/", "/var/tmp/", "/tmp/"):
    path += os.environ["MARK"]
    with open(path, "w") as f:
        f.write("x" * (1 << 20))
print(sorted(p for p in os.listdir("/proc") if p.isdigit()) == [str(os.getpid())])
"""


def test_a_native_run_sees_only_its_own_and_leaves_no_shared_files(orch, root_only):
    """Finding 5: files a run left in /tmp, /dev/shm and /var/tmp outlived it (RAM in
    /dev/shm then counted nowhere), and every run saw every process of the host.
    Each run now has its own /tmp, /dev/shm, /var/tmp and view of /proc."""
    mark = f"symbi-trace-{os.getpid()}"
    res = orch.execute_code(NONE, LEAVES_TRACES, env={"MARK": mark})
    assert res.success, res.stderr
    assert res.stdout == "True\n"  # only its own process, not the kernel's or root's
    assert not [d for d in ("/dev/shm", "/var/tmp", "/tmp") if Path(d, mark).exists()]
    assert res.enforcement["process_view"].startswith("its own processes only")


FILLS_THE_DISK = r"""
import os
for d in ("/tmp", "/dev/shm", "."):
    try:
        with open(os.path.join(d, "fill"), "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC
print(sum(os.path.getsize(os.path.join(d, "fill")) for d in ("/tmp", "/dev/shm", ".")) >> 20)
open("last", "w").write("y" * (1 << 20))
"""


@pytest.mark.parametrize(
    "tier", ["none", "docker", "gvisor", "microvm"], ids=["None", "Tier1", "Tier2", "Tier3"]
)
def test_a_run_writes_no_more_than_its_disk_limit(orch, tier):
    """Finding 5: a run could write without limit (20 files of 1 MiB under a 2 MiB
    file-size limit). What it writes, in its directory, /tmp and /dev/shm, now fits in
    its disk limit at every tier, and running out says so."""
    chosen = SecurityTier.parse(tier)
    availability = orch.sandbox(chosen).availability()
    need(availability.ok, availability.reason, tier=tier)
    if chosen is NONE:
        need(os.geteuid() == 0, "a run's own tmpfs needs root")
    res = orch.execute_code(
        chosen, FILLS_THE_DISK, limits=ResourceLimits(max_disk_mb=16, max_file_size_mb=100)
    )
    assert res.killed_by == "disk", res.stderr
    assert "disk" in res.limits_reached
    assert "No space left on device" in res.stderr
    assert int(res.stdout) <= 16  # MiB written in all, against 192 tried
    assert not res.enforcement["disk"].startswith("not enforced")


WRITES_A_VOLUME = r"""
import os
open(os.path.join(os.environ["SHARED"], "from-the-run"), "w").write("kept")
try:
    open(os.path.join(os.environ["READ_ONLY"], "planted"), "w")
    print("planted")
except OSError as exc:
    print("refused", exc.errno)
"""


def test_a_native_volume_reaches_the_host_and_read_only_holds(orch, workdir, root_only):
    """Past its private /tmp a run writes where the host sees it only through a volume,
    and a read-only one is read-only even to a uid that may write the directory."""
    shared, read_only = (workdir.parent / f"{workdir.name}-{n}" for n in ("rw", "ro"))
    for d in (shared, read_only):
        d.mkdir()
        d.chmod(0o777)
    try:
        res = orch.execute_code(
            NONE,
            WRITES_A_VOLUME,
            env={"SHARED": str(shared), "READ_ONLY": str(read_only)},
            volumes=[f"{shared}:{shared}:rw", f"{read_only}:{read_only}:ro"],
        )
        assert res.stdout == f"refused {errno.EROFS}\n", res.stderr
        assert (shared / "from-the-run").read_text() == "kept"
        assert not list(read_only.iterdir())
    finally:
        shutil.rmtree(shared)
        shutil.rmtree(read_only)


def test_a_native_run_cannot_claim_the_disk_limit_stopped_it(orch, root_only):
    """Where the host sees the run's tmpfs, its word that the disk was full (the
    error a full disk gives, on its stderr) is not taken for it."""
    res = orch.execute_code(
        NONE,
        "import sys\nsys.exit('OSError: [Errno 28] No space left on device')",
        limits=ResourceLimits(max_disk_mb=16),
    )
    assert res.exit_code == 1 and "No space left on device" in res.stderr
    assert res.killed_by is None
    assert "disk" not in res.limits_reached


def test_a_native_run_cannot_reach_the_audit_log_or_its_anchor(workdir, tmp_path, root_only):
    """Even in a directory anyone may enter, the log, its head and the head's key are
    the writer's alone: a run cannot cut the log and re-anchor it."""
    from symbi_jupyter.audit import verify
    from symbi_jupyter.orchestrator import SandboxOrchestrator

    open_dir = Path(tempfile.mkdtemp(prefix="symbi-audit-"))
    try:
        open_dir.chmod(0o755)
        log = open_dir / "audit.jsonl"
        orch = SandboxOrchestrator(
            allow_native_execution=True,
            working_directory=str(workdir),
            audit_log_path=str(log),
        )
        try:
            orch.execute_code(NONE, "pass")
            attack = (
                "import os\n"
                f"log = {str(log)!r}\n"
                "for path, mode in ((log + '.key', 'r'), (log + '.head', 'r+'), (log, 'r+')):\n"
                "    try:\n"
                "        open(path, mode).close(); print('reached', path)\n"
                "    except OSError as e:\n"
                "        print('refused', e.errno)\n"
            )
            res = orch.execute_code(NONE, attack)
        finally:
            orch.close()
        assert res.success, res.stderr
        assert "reached" not in res.stdout and res.stdout.count("refused") == 3
        assert verify(log).ok and verify(log).records == 2
    finally:
        shutil.rmtree(open_dir)


# Kernel objects a run can make that outlive it where the host's IPC namespace and
# /run/lock are shared: a System V shared-memory segment (RAM charged to no one once
# the run is gone), a POSIX message queue, and a file in the other directory any user
# may write.
LEAVES_KERNEL_OBJECTS = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
mark = os.environ["MARK"]
libc.shmget.restype = ctypes.c_int
shm = libc.shmget(int(os.environ["KEY"]), 8 << 20, 0o1000 | 0o600)  # IPC_CREAT
libc.mq_open.restype = ctypes.c_int
mq = libc.mq_open(("/" + mark).encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
try:
    open("/run/lock/" + mark, "w").write("x")
    lock = "written"
except OSError as exc:
    lock = exc.errno
print(shm >= 0, mq >= 0, lock)
"""


def _host_ipc(key: int, mark: str) -> list[str]:
    """The objects LEAVES_KERNEL_OBJECTS made that the host still has, removing them."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    left = []
    shmid = libc.shmget(key, 0, 0)
    if shmid >= 0:
        left.append("shm")
        libc.shmctl(shmid, 0, None)  # IPC_RMID
    if libc.mq_unlink(f"/{mark}".encode()) == 0:
        left.append("mqueue")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/run/lock/{mark}")
        left.append("/run/lock")
    return left


def test_a_native_run_leaves_no_kernel_objects_behind(orch, root_only):
    """Finding 5, continued: shared memory and message queues a run made outlived it
    in the host's IPC namespace, and so did its files in /run/lock. Each run now has
    its own IPC namespace and /run/lock, gone with it."""
    need(os.path.isdir("/run/lock"), "this host has no /run/lock")
    mark = f"symbi-ipc-{os.getpid()}"
    key = 0x5E000000 + os.getpid()
    try:
        res = orch.execute_code(NONE, LEAVES_KERNEL_OBJECTS, env={"MARK": mark, "KEY": str(key)})
    finally:
        left = _host_ipc(key, mark)
    assert res.success, res.stderr
    assert res.stdout == "True True written\n"  # the run could make each of them
    assert left == []
    assert res.enforcement["private_tmp"].startswith("/tmp")


# What a run leaves in a read-write volume: a private file, a directory, a file with
# the set-user-id bit (a way into the run's uid for anyone who runs it later).
LEAVES_FILES_IN_A_VOLUME = r"""
import os
root = os.environ["SHARED"]
os.makedirs(os.path.join(root, "out", "deep"))
with open(os.path.join(root, "out", "deep", "secret"), "w") as f:
    f.write("only mine")
os.chmod(os.path.join(root, "out", "deep", "secret"), 0o600)
with open(os.path.join(root, "tool"), "w") as f:
    f.write("#!/bin/sh\n")
os.chmod(os.path.join(root, "tool"), 0o4755)
os.symlink("/etc/hostname", os.path.join(root, "link"))
print(os.getuid())
"""


def _owners(top: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(top)): (p.lstat().st_uid, p.lstat().st_gid, p.lstat().st_mode & 0o7000)
        for p in sorted(top.rglob("*"))
    }


@pytest.mark.parametrize(
    ("tier", "mount"),
    [("none", "{d}:{d}:rw"), ("docker", "{d}:/mnt/shared:rw"), ("gvisor", "{d}:/mnt/shared:rw")],
    ids=["None", "Tier1", "Tier2"],
)
def test_a_freed_uid_owns_nothing_a_later_sandbox_could_read(orch, root_only, tier, mount):
    """A uid goes back to the block when its sandbox ends; what the sandbox wrote in a
    read-write volume kept that uid, so a later sandbox leased the same uid could read
    it (and anyone could become that uid through a set-user-id file it left). The
    host now hands such files to the volume's owner before the uid is free again."""
    chosen = SecurityTier.parse(tier)
    availability = orch.sandbox(chosen).availability()
    need(availability.ok, availability.reason, tier=tier)
    owner = 4242  # the volume's owner: a uid of no account, as the test made it
    shared = Path(tempfile.mkdtemp(prefix="symbi-handback-"))
    try:
        os.chown(shared, owner, owner)
        shared.chmod(0o777)
        inside = str(shared) if chosen is NONE else "/mnt/shared"
        res = orch.execute_code(
            chosen,
            LEAVES_FILES_IN_A_VOLUME,
            env={"SHARED": inside},
            volumes=[mount.format(d=shared)],
        )
        assert res.success, res.stderr
        assert leased(res.stdout.strip())  # the run had a leased uid of its own
        # Every file and directory becomes the owner's, and the set-user-id bit goes:
        # once the sandbox is removed, which may follow its result.
        handed = dict.fromkeys(["out", "out/deep", "out/deep/secret", "tool"], (owner, owner, 0))
        wait_until(lambda: {k: v for k, v in _owners(shared).items() if k != "link"} == handed)
        owners = _owners(shared)
        assert set(owners) == {*handed, "link"}
        assert {k: v for k, v in owners.items() if k != "link"} == handed
    finally:
        shutil.rmtree(shared)


def test_hand_back_follows_no_link_and_retires_a_uid_it_cannot_clear(tmp_path, root_only):
    """Root walks a tree other sandboxes may write: it changes no file through a link,
    and a uid whose files it could not all reach is never leased again."""
    from symbi_jupyter.sandboxes.supervisor import identity

    uid = 1_950_000_000  # a uid of no account and no process, as the test uses it
    top, outside = tmp_path / "volume", tmp_path / "outside"
    top.mkdir()
    outside.mkdir()
    os.chown(top, 4242, 4242)
    for path in (top / "mine", outside / "target"):
        path.write_text("x")
        os.chown(path, uid, uid)
    (top / "to-outside").symlink_to(outside)
    (top / "to-target").symlink_to(outside / "target")
    deep = top.joinpath(*["d"] * (identity.MAX_DEPTH + 1))
    deep.mkdir(parents=True)
    (deep / "deepest").write_text("x")
    os.chown(deep / "deepest", uid, uid)

    assert identity.hand_back(str(top), uid, uid) is False  # too deep to see all
    assert (top / "mine").stat().st_uid == 4242
    assert (outside / "target").stat().st_uid == uid  # not reached through a link
    assert (deep / "deepest").stat().st_uid == uid

    block = {"first": uid, "count": 1, "dir": str(tmp_path / "leases")}
    lease = identity.lease(block)
    lease.hand_back([str(top)])  # incomplete: the uid is retired
    lease.release()
    with pytest.raises(OSError, match="in use"):
        identity.lease(block)


# Flips a directory a victim will be given as a volume between a real directory and a
# link to another one, from a run that may write its parent (a read-write volume).
FLIPS_A_VOLUME = r"""
import os, time
parent, target, seconds = os.environ["ATTACK"].split("|")
sub, real, link = (os.path.join(parent, n) for n in ("sub", "real", "link"))
deadline, flips = time.monotonic() + float(seconds), 0
while time.monotonic() < deadline:
    try:
        os.symlink(target, link)
    except FileExistsError:
        pass
    os.rename(sub, real)   # the directory steps aside ...
    os.rename(link, sub)   # ... a link to the target takes its name ...
    os.rename(sub, link)
    os.rename(real, sub)   # ... and the directory is back
    flips += 1
print("flips", flips)
"""

# What root bound for the victim: no mount of the target's directory, none over it.
VICTIM_OF_A_FLIP = r"""
import os
target = os.environ["TARGET"]
wrong = [
    (f[3], f[4])  # the mount's root in its filesystem, where it is mounted
    for f in (line.split() for line in open("/proc/self/mountinfo"))
    if os.path.basename(target) in f[3] or f[4] == target
]
print(wrong, open(os.path.join(target, "canary")).read())
"""


def test_root_binds_a_volume_through_no_link_a_run_planted(orch, root_only):
    """Root binds a tier None run's volume after the host checked its path. A run that
    may write the volume's parent swapped the checked directory for a link in that
    window, so that root bound another directory than the host allowed, or bound the
    volume over a path of the link's choosing in another run. The bind now walks both
    paths by descriptors and refuses a link."""
    parent = Path(tempfile.mkdtemp(prefix="symbi-flip-"))
    target = Path(tempfile.mkdtemp(prefix="symbi-flip-target-"))
    try:
        parent.chmod(0o777)
        target.chmod(0o755)
        (target / "canary").write_text("original")
        sub = parent / "sub"
        sub.mkdir(mode=0o777)
        (sub / "planted").write_text("planted")
        (sub / "canary").write_text("planted")
        attacker = threading.Thread(
            target=orch.execute_code,
            args=(NONE, FLIPS_A_VOLUME),
            kwargs={
                "env": {"ATTACK": f"{parent}|{target}|20"},
                "volumes": [f"{parent}:{parent}:rw"],
                "limits": ResourceLimits(timeout_seconds=40),
            },
        )
        attacker.start()
        seen, fine = set(), 0
        deadline = time.monotonic() + 18
        while time.monotonic() < deadline:
            try:
                res = orch.execute_code(
                    NONE,
                    VICTIM_OF_A_FLIP,
                    env={"SUB": str(sub), "TARGET": str(target)},
                    volumes=[f"{sub}:{sub}:ro"],
                )
            except Exception:  # the host's own check met the link: refused, no run
                continue
            if res.success:
                fine += 1
                seen.add(res.stdout.strip())
        attacker.join()
        # Only the checked directory, bound at its own path; never the target's
        # directory bound, nor the checked directory over the target. (What the
        # victim finds at the name itself is the attacker's: it may write there.)
        assert seen <= {"[] original"}, seen
        assert fine > 0
    finally:
        with contextlib.suppress(OSError):
            (parent / "link").unlink()
        shutil.rmtree(parent, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)


def test_a_native_volume_through_a_link_is_refused(orch, workdir):
    """The host checks a volume's path once and root binds it later: a path through a
    link is refused, naming where it leads, rather than bound wherever the link points
    by then."""
    from symbi_jupyter.errors import ConfigError

    real = workdir.parent / f"{workdir.name}-real"
    link = workdir.parent / f"{workdir.name}-link"
    real.mkdir()
    link.symlink_to(real)
    try:
        with pytest.raises(ConfigError, match=f"leads through a link \\(to {real}\\)"):
            orch.execute_code(NONE, "pass", volumes=[f"{link}:{link}:ro"])
    finally:
        link.unlink()
        real.rmdir()
