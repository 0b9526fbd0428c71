"""Starting a VMM process: the descriptors the host opens for it, and the process
itself, in its own session and cgroup, as a uid of its own, dying with the kernel."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from ...errors import TierUnavailable
from ..supervisor.cgroups import VM_PARENT, RunCgroup, stale_groups
from ..supervisor.identity import Lease
from ..supervisor.proctree import PR_SET_NO_NEW_PRIVS, host_tag, pid_alive
from .vmm import VMMDriver, VMSpec

_PR_SET_PDEATHSIG = 1


class _Launcher:
    """One thread, alive as long as the process, that starts every VMM: PDEATHSIG fires
    when the *thread* that forked the child ends, so a VM started from a short-lived
    thread (a pool refill) would be killed as soon as that thread finished."""

    _lock = threading.Lock()
    _jobs: queue.Queue | None = None

    @classmethod
    def call(cls, fn: Any) -> Any:
        with cls._lock:
            if cls._jobs is None:
                cls._jobs = queue.Queue()
                threading.Thread(
                    target=cls._serve, args=(cls._jobs,), daemon=True, name="symbi-vmm-launcher"
                ).start()
        done: queue.Queue = queue.Queue()
        cls._jobs.put((fn, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _serve(jobs: queue.Queue) -> None:
        while True:
            fn, done = jobs.get()
            try:
                done.put((True, fn()))
            except BaseException as exc:  # handed to the caller
                done.put((False, exc))


def open_for_vmm(spec: VMSpec) -> list[int]:
    """Open the agent's listening socket and the console file in the run directory
    (root's) for the VMM, which then needs no path of its own there."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(spec.run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        # Through the directory's descriptor: a short path to a deep socket.
        listener.bind(f"/proc/self/fd/{dir_fd}/{spec.socket.name}")
        listener.listen(1)
        console = os.open(
            spec.console.name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
    except BaseException:
        listener.close()
        raise
    finally:
        os.close(dir_fd)
    spec.agent_fd, spec.console_fd = listener.detach(), console
    opened = [spec.agent_fd, spec.console_fd]
    try:
        # Opened by root: the VMM's uid may not reach them by path (a guest built
        # under a private directory), and it gets no more than it needs.
        for name in ("kernel", "initrd", "rootfs"):
            path = getattr(spec, name)
            if path:
                writable = name == "rootfs" and not spec.rootfs_read_only
                spec.file_fds[name] = os.open(
                    path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
                )
                opened.append(spec.file_fds[name])
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return opened


def launch(
    argv: list[str],
    cgroup: RunCgroup | None,
    run_dir: Path,
    stdio: bool,
    lease: Lease | None = None,
    pass_fds: list[int] | None = None,
) -> subprocess.Popen:
    """Start the VMM in its own session, in its cgroup, as its own uid (``lease``),
    dying with us (PDEATHSIG)."""
    return _Launcher.call(lambda: _popen(argv, cgroup, run_dir, stdio, lease, pass_fds or []))


def _popen(
    argv: list[str],
    cgroup: RunCgroup | None,
    run_dir: Path,
    stdio: bool,
    lease: Lease | None,
    pass_fds: list[int],
) -> subprocess.Popen:
    libc = ctypes.CDLL(None, use_errno=True)
    procs = os.path.join(cgroup.paths["memory"], "cgroup.procs") if cgroup else None

    def confine() -> None:
        if procs:  # while still root
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        if lease is not None:
            os.setgroups(kvm_groups())
            os.setresgid(lease.gid, lease.gid, lease.gid)
            os.setresuid(lease.uid, lease.uid, lease.uid)
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        # After the change of uid, which clears it.
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    with open(run_dir / "vmm.log", "wb") as errors:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdio else subprocess.DEVNULL,
            stderr=errors,
            # Its own uid cannot enter root's run directory, and needs nothing there.
            cwd="/" if lease is not None else run_dir,
            pass_fds=pass_fds,
            start_new_session=True,
            preexec_fn=confine,  # only syscalls and a write before exec
        )


def kvm_groups() -> list[int]:
    """The group that may use /dev/kvm, if any may: an unprivileged VMM needs it."""
    with contextlib.suppress(OSError):
        st = os.stat("/dev/kvm")
        if st.st_mode & 0o060 == 0o060 and st.st_gid != 0:
            return [st.st_gid]
    return []


def spawn(
    tier_name: str,
    driver: VMMDriver,
    spec: VMSpec,
    cgroup: RunCgroup | None,
    lease: Lease | None,
    qemu: bool,
) -> subprocess.Popen:
    """Start the VMM for ``spec``; if it cannot start, nothing of the run is left
    (its directory, cgroup and uid) and TierUnavailable says why."""
    passed: list[int] = []
    try:
        if qemu:
            passed = open_for_vmm(spec)
        return launch(
            driver.command(spec),
            cgroup,
            spec.run_dir,
            stdio=not qemu,
            lease=lease,
            pass_fds=passed,
        )
    except OSError as exc:
        shutil.rmtree(spec.run_dir, ignore_errors=True)
        if cgroup is not None:
            cgroup.remove()
        if lease is not None:
            lease.release()
        raise TierUnavailable(f"{tier_name}: cannot start {driver.name}: {exc}") from None
    finally:
        for fd in passed:
            os.close(fd)  # the VMM has its own copies


def reap_dead_kernels(root: Path, log: Any) -> None:
    """Remove the VM run directories under ``root`` and the VMM cgroups of kernels (of
    this pid namespace) that died; their VMs died with them (PDEATHSIG)."""
    namespace = host_tag().split("-")[0]
    for path in root.glob(f"symbi-vm-{namespace}-*"):
        pid = path.name.removeprefix("symbi-vm-").split("-")[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            log.warning("removed %s left by a dead kernel", path)
    for group in stale_groups(VM_PARENT):
        RunCgroup(1, {"memory": group}).remove()
        log.warning("removed %s left by a dead kernel", group)
