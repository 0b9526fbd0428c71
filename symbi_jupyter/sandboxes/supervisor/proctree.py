"""Processes: liveness, the host tag, a run's process tree, prctl and rlimits.

Stdlib only; the container and microVM tiers import it too (liveness, host tag).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cgroups import RunCgroup

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000

RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}

libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int) -> bool:
    return libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def soft_hard(value: int | list[int]) -> tuple[int, int]:
    """A request's rlimit (one value for both, or [soft, hard]) as (soft, hard)."""
    if isinstance(value, list):
        return value[0], value[1]
    return value, value


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (killed, not yet waited for) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = read_text(f"/proc/{pid}/stat")
    return not (stat and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"])


def host_tag(pid: int | None = None) -> str:
    """``<pid namespace inode>-<pid>`` (default: this process): names a host uniquely
    on this machine, where cgroup trees and /tmp may be shared by processes of other
    pid namespaces."""
    return f"{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid() if pid is None else pid}"


def descendants(root: int) -> set[int]:
    """Every live process below ``root``. Works with no cgroup at all, because the
    monitor is a subreaper: orphans are re-parented to it, not to init."""
    found: set[int] = set()
    stack = [root]
    while stack:
        pid = stack.pop()
        children = _children(pid)
        if children is None:
            return _descendants_from_proc(root)
        for child in children:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _children(pid: int) -> list[int] | None:
    """Children of ``pid`` from /proc/PID/task/*/children (one small read per thread
    instead of a scan of every process); None where the kernel lacks the file."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    out: list[int] = []
    for tid in tasks:
        text = read_text(f"/proc/{pid}/task/{tid}/children")
        if text is None:
            if os.path.exists(f"/proc/{pid}/task/{tid}"):
                return None
            continue
        out.extend(int(c) for c in text.split())
    return out


def _descendants_from_proc(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_text(f"/proc/{entry}/stat")
        if not stat:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def kill_tree(cgroup: RunCgroup | None, reaped: dict[int, tuple]) -> int:
    """SIGKILL every process of the run until none is left, reaping them into
    ``reaped`` (pid -> (wait status, rusage)). Returns how many were killed."""
    killed = 0
    for _ in range(1000):
        if cgroup is not None:
            cgroup.kill_all()
        alive = descendants(os.getpid())
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        reap_all(reaped)
        if not alive and (cgroup is None or not cgroup.pids()):
            break
        time.sleep(0.001)
    return killed


def reap_all(reaped: dict[int, tuple]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reaped[pid] = (status, usage)


def default_signals() -> None:
    """Undo what the supervisor set, before an exec."""
    for sig in (
        signal.SIGPIPE,
        signal.SIGXFSZ,
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGCHLD,
        signal.SIGUSR1,
        signal.SIGXCPU,
    ):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe or file may take part of a write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
