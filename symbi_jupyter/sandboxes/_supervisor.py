"""The native tier's process supervisor: a small, long-lived helper process.

Runs as its own script (``python -I -S _supervisor.py FD HOST_PID SPARES``), stdlib
only, so that it stays small. Why a separate process rather than forking from the notebook:

* a child forked (or vforked) from a large kernel inherits the kernel's memory
  high-water mark in ``ru_maxrss``; children forked from this small process do not,
  so ``wait4`` figures stay honest where no cgroup is available;
* forking a small process is cheap, however large the kernel has grown.

Protocol: after the supervisor's ``ready`` the host sends ``{"profile": ...}``, what
the first spares start an interpreter for (see :class:`Monitor`); then one
SOCK_SEQPACKET message per run, a JSON request with four descriptors attached (stdout,
stderr, status write ends, and a file holding the code). Each run is taken by a
*monitor*, a child subreaper forked in advance that owns one run: it makes the run's
directory and cgroups, starts the workload under its limits, enforces the wall clock,
kills the whole process tree when the run ends, and writes JSON lines to the status
pipe: ``{"event": "started", ...}`` then ``{"event": "exit", ...}`` (or one
``{"event": "error", ...}`` if the run could not start).
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
CGROUP_PARENT_NAME = "symbi-jupyter"
# Stands for the run's directory in a request's environment: the monitor makes the
# directory. NUL cannot occur in a real environment value.
RUN_DIR = "\0run_dir\0"
PRESTARTED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_prestarted.py")
# A started interpreter takes a request only if these are what it was started with.
PROFILE_KEYS = ("executable", "argv0", "filename", "workdir", "env", "uid", "gid",
                "new_netns", "use_cgroup")

_libc = ctypes.CDLL(None, use_errno=True)

RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
}


def _prctl(option: int, arg: int) -> bool:
    return _libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(text: str | None) -> dict[str, int]:
    """Parse ``key value`` lines (memory.events, pids.events, oom_control)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


# --------------------------------------------------------------------------- cgroups
def _own_cgroup_paths() -> dict[str, str]:
    """Map controller (or "" for cgroup v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths[""] = path
        for name in controllers.split(","):
            if name:
                paths[name] = path
    return paths


def probe_cgroups() -> dict:
    """Find where per-run cgroups can be created. Returns a description used by the
    host to report enforcement, and by monitors to create the run's groups."""
    own = _own_cgroup_paths()
    v1: dict[str, str] = {}
    for ctrl in V1_CONTROLLERS:
        base = os.path.join(CGROUP_ROOT, ctrl)
        if ctrl in own and os.path.isfile(os.path.join(base, "cgroup.procs")):
            parent = os.path.join(base + own[ctrl], CGROUP_PARENT_NAME)
            try:
                os.makedirs(parent, exist_ok=True)
                probe = os.path.join(parent, f"probe-{os.getpid()}")
                os.mkdir(probe)
                os.rmdir(probe)
                v1[ctrl] = parent
            except OSError:
                pass
    if v1:
        return {"version": 1, "parents": v1}
    if "" in own:
        for unified in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
            ctl = os.path.join(unified + own[""], "cgroup.subtree_control")
            if not os.path.isfile(os.path.join(unified, "cgroup.controllers")):
                continue
            enabled = set((_read(ctl) or "").split())
            wanted = [c for c in ("memory", "pids", "cpu") if c in enabled]
            parent = os.path.join(unified + own[""], CGROUP_PARENT_NAME)
            try:
                os.makedirs(parent, exist_ok=True)
                sub = os.path.join(parent, "cgroup.subtree_control")
                for c in wanted:
                    _write(sub, f"+{c}")
            except OSError:
                continue
            if wanted:
                return {"version": 2, "parents": {"": parent}, "controllers": wanted}
    return {"version": None, "parents": {}}


class RunCgroup:
    """The cgroups of one run (one per v1 controller, or one v2 group)."""

    def __init__(self, probe: dict, name: str) -> None:
        self.version = probe.get("version")
        self.paths: dict[str, str] = {}
        for ctrl, parent in probe.get("parents", {}).items():
            path = os.path.join(parent, name)
            os.mkdir(path)
            self.paths[ctrl] = path
        self.controllers = (
            set(probe.get("controllers", [])) if self.version == 2 else set(self.paths)
        )

    def _file(self, ctrl: str, v1_name: str, v2_name: str) -> str | None:
        if self.version == 1 and ctrl in self.paths:
            return os.path.join(self.paths[ctrl], v1_name)
        if self.version == 2 and ctrl in self.controllers:
            return os.path.join(self.paths[""], v2_name)
        return None

    def apply(self, memory_bytes: int | None, pids: int | None, cores: float | None) -> dict:
        """Set limits; return {limit: "cgroup"} for each one applied."""
        done: dict[str, str] = {}
        if memory_bytes:
            path = self._file("memory", "memory.limit_in_bytes", "memory.max")
            if path:
                _write(path, str(memory_bytes))
                # Without swap accounting a v1 group could page out past its limit.
                for extra in ("memory.memsw.limit_in_bytes", "memory.swap.max"):
                    swap = self._file("memory", extra, extra)
                    if swap and os.path.exists(swap):
                        try:
                            _write(swap, str(memory_bytes) if "memsw" in extra else "0")
                        except OSError:
                            pass
                done["memory"] = "cgroup"
        if pids:
            path = self._file("pids", "pids.max", "pids.max")
            if path:
                _write(path, str(pids))
                done["processes"] = "cgroup"
        if cores:
            period = 100_000
            quota = max(1000, int(cores * period))
            if self.version == 1 and "cpu" in self.paths:
                _write(os.path.join(self.paths["cpu"], "cpu.cfs_period_us"), str(period))
                _write(os.path.join(self.paths["cpu"], "cpu.cfs_quota_us"), str(quota))
                done["cpu_cores"] = "cgroup"
            elif self.version == 2 and "cpu" in self.controllers:
                _write(os.path.join(self.paths[""], "cpu.max"), f"{quota} {period}")
                done["cpu_cores"] = "cgroup"
        return done

    def join(self, pid: int) -> None:
        for path in self.paths.values():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def leave(self, pid: int) -> None:
        """Move ``pid`` back to the cgroups the supervisor runs in."""
        for path in self.paths.values():
            _write(os.path.join(os.path.dirname(os.path.dirname(path)), "cgroup.procs"), str(pid))

    @property
    def joins_early(self) -> bool:
        """Whether the workload may join while it waits: only where the peak can then
        be reset before exec (v1; v2's memory.peak resets per open file only)."""
        return self.version == 1

    def reset_peak(self) -> None:
        if self.version == 1 and "memory" in self.paths:
            with contextlib.suppress(OSError):
                _write(os.path.join(self.paths["memory"], "memory.max_usage_in_bytes"), "0")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths.values():
            for line in (_read(os.path.join(path, "cgroup.procs")) or "").split():
                found.add(int(line))
        return found

    def freeze(self, frozen: bool) -> bool:
        if self.version == 1 and "freezer" in self.paths:
            state = os.path.join(self.paths["freezer"], "freezer.state")
            try:
                _write(state, "FROZEN" if frozen else "THAWED")
                return True
            except OSError:
                return False
        if self.version == 2:
            try:
                _write(os.path.join(self.paths[""], "cgroup.freeze"), "1" if frozen else "0")
                return True
            except OSError:
                return False
        return False

    def kill_all(self) -> None:
        if self.version == 2:
            try:
                _write(os.path.join(self.paths[""], "cgroup.kill"), "1")
                return
            except OSError:
                pass
        for _ in range(100):
            if not self.pids():
                return
            # Frozen, a fork bomb cannot fork between our listing and our kill.
            frozen = self.freeze(True)
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if frozen:
                self.freeze(False)
            if not pids:
                return
            time.sleep(0.001)

    def memory_usage(self) -> int | None:
        path = self._file("memory", "memory.usage_in_bytes", "memory.current")
        text = _read(path) if path else None
        return int(text) if text and text.strip().isdigit() else None

    def peak_memory(self) -> int | None:
        path = self._file("memory", "memory.max_usage_in_bytes", "memory.peak")
        text = _read(path) if path else None
        return int(text) if text and text.strip().isdigit() else None

    def oom_kills(self) -> int:
        if self.version == 1 and "memory" in self.paths:
            control = _keyed(_read(os.path.join(self.paths["memory"], "memory.oom_control")))
            if "oom_kill" in control:
                return control["oom_kill"]
            failcnt = _read(os.path.join(self.paths["memory"], "memory.failcnt"))
            return int(failcnt) if failcnt and failcnt.strip().isdigit() else 0
        path = self._file("memory", "", "memory.events")
        return _keyed(_read(path) if path else None).get("oom_kill", 0)

    def pids_limit_hits(self) -> int:
        path = self._file("pids", "pids.events", "pids.events")
        return _keyed(_read(path) if path else None).get("max", 0)

    def cpu_usage_seconds(self) -> float | None:
        if self.version == 1 and "cpuacct" in self.paths:
            text = _read(os.path.join(self.paths["cpuacct"], "cpuacct.usage"))
            return int(text) / 1e9 if text and text.strip().isdigit() else None
        if self.version == 2:
            stat = _keyed(_read(os.path.join(self.paths[""], "cpu.stat")))
            if "usage_usec" in stat:
                return stat["usage_usec"] / 1e6
        return None

    def remove(self) -> None:
        for path in self.paths.values():
            remove_cgroup_dir(path)


def remove_cgroup_dir(path: str, attempts: int = 50, pause: float = 0.005) -> None:
    """rmdir a cgroup, retrying while the kernel still holds it (EBUSY just after its
    last task exits); a missing one is fine."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(pause)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (killed, not yet waited for) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _read(f"/proc/{pid}/stat")
    return not (stat and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"])


def host_tag(pid: int | None = None) -> str:
    """``<pid namespace inode>-<pid>`` (default: this process): names a host uniquely
    on this machine, where cgroup trees and /tmp may be shared by processes of other
    pid namespaces. The sandboxes import it from here, where it is also available to
    this module when it runs as a stand-alone script."""
    return f"{os.stat('/proc/self/ns/pid').st_ino}-{os.getpid() if pid is None else pid}"


def reap_stale(probe: dict) -> list[str]:
    """Remove run cgroups left by a host of this pid namespace that died without its
    monitors cleaning up, killing anything still inside. Groups of other namespaces
    belong to hosts we cannot see and are left alone."""
    namespace = host_tag().split("-")[0]
    stale: dict[str, dict[str, str]] = {}
    for ctrl, parent in probe.get("parents", {}).items():
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            path = os.path.join(parent, name)
            if (
                len(parts) == 3
                and parts[0] == namespace
                and parts[1].isdigit()
                and os.path.isdir(path)
                and not pid_alive(int(parts[1]))
            ):
                stale.setdefault(name, {})[ctrl] = path
    for paths in stale.values():
        group = RunCgroup.__new__(RunCgroup)
        group.version, group.paths = probe.get("version"), paths
        group.controllers = set(probe.get("controllers", [])) or set(paths)
        group.kill_all()
        group.remove()
    return sorted(stale)


# --------------------------------------------------------------------------- processes
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
        text = _read(f"/proc/{pid}/task/{tid}/children")
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
        stat = _read(f"/proc/{entry}/stat")
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


# --------------------------------------------------------------------------- workload
def _await_workload(
    channel: socket.socket, cgroup: RunCgroup | None, home_netns: int | None
) -> None:
    """The pre-forked workload process: wait for the run's request, then confine
    itself and exec the code. Exits quietly if the monitor is discarded."""
    try:
        gc.disable()
        # Joining a v1 memory cgroup costs a quarter of a millisecond: pay it now.
        early = cgroup is not None and cgroup.joins_early
        if early:
            cgroup.join(os.getpid())
        received = _receive(channel, 2)
    except BaseException:  # nothing to report to: the monitor is gone
        os._exit(1)
    if received is None:
        os._exit(0)
    req, fds = received
    if early and not req.get("join_cgroup"):
        cgroup.leave(os.getpid())
    if home_netns is not None and not req.get("new_netns"):
        # Allowed the network: leave the empty namespace prepared for us, or fail
        # closed, visibly.
        if _libc.setns(home_netns, CLONE_NEWNET) != 0:
            os.write(fds[1], b"symbi-jupyter: could not rejoin the host network namespace\n")
            os._exit(126)
    _exec_workload(req, cgroup if req.get("join_cgroup") else None, *fds)


def _exec_workload(
    req: dict, cgroup: RunCgroup | None, out_fd: int, err_fd: int, in_fd: int | None = None
) -> None:
    """In the workload process: confine, then exec. Never returns."""
    # A failure is the run's to report, on its stderr (fd 2 is the supervisor's
    # until the dup2 below).
    report_fd = err_fd
    try:
        os.setsid()
        if cgroup is not None:
            if cgroup.joins_early:
                # Pages this process touched while it waited are not the run's.
                cgroup.reset_peak()
            else:
                cgroup.join(os.getpid())
        for name, value in req.get("rlimits", {}).items():
            soft, hard = soft_hard(value)
            try:
                resource.setrlimit(RLIMITS[name], (soft, hard))
            except (OSError, ValueError) as exc:
                raise OSError(f"RLIMIT_{name.upper()} = {hard}: {exc}") from None
        os.chdir(req["cwd"])
        uid, gid = req.get("uid"), req.get("gid")
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        # A kernel's worker reads its requests on stdin; a run has none.
        os.dup2(in_fd if in_fd is not None else os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        report_fd = 2
        os.closerange(3, 65536)
        _default_signals()
        os.execve(req["executable"], req["argv"], req["env"])
    except BaseException as exc:  # report anything, then die
        try:
            os.write(report_fd,
                     f"symbi-jupyter: cannot start {req['argv'][0]}: {exc}\n".encode())
        finally:
            os._exit(127)


def soft_hard(value: int | list[int]) -> tuple[int, int]:
    """A request's rlimit (one value for both, or [soft, hard]) as (soft, hard)."""
    return tuple(value) if isinstance(value, list) else (value, value)


def _default_signals() -> None:
    """Undo what the supervisor set, before an exec."""
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                signal.SIGCHLD, signal.SIGUSR1, signal.SIGXCPU):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def profile_of(req: dict) -> dict:
    """What a started interpreter must have been made for to take ``req``."""
    return {key: req.get(key) for key in PROFILE_KEYS}


def _run_environment(template: dict[str, str], run_dir: str) -> dict[str, str]:
    return {key: value.replace(RUN_DIR, run_dir) for key, value in template.items()}


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe or file may take part of a write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_new(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _own_directory(path: str) -> bool:
    """Whether ``path`` is still a directory of this process's user (not a link)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Monitor:
    """Owns one run. Created as a spare before any request arrives, so the slow parts
    (a network namespace, the run's cgroups, and for the usual Python run the run
    directory and a started interpreter) are ready when one does."""

    def __init__(
        self,
        probe: dict,
        host_pid: int,
        inherited: tuple[int, ...] = (),
        profile: dict | None = None,
    ) -> None:
        self.probe = probe
        self.host_pid = host_pid
        self.inherited = inherited
        self.cancel = False
        self.cgroup: RunCgroup | None = None
        self.cgroup_error: str | None = None
        self.home_netns: int | None = None
        if os.geteuid() == 0:
            # The workload inherits this empty namespace; the monitor needs no network.
            # Keep a way back for runs that are allowed the network.
            self.home_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
            if _libc.unshare(CLONE_NEWNET) != 0:
                os.close(self.home_netns)
                self.home_netns = None
        if probe.get("version"):
            try:
                self.cgroup = RunCgroup(probe, f"{host_tag(host_pid)}-{os.getpid()}")
            except OSError as exc:
                self.cgroup_error = str(exc)
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        # Not SIG_IGN (inherited from the supervisor): that would reap the workload
        # behind our back and lose its exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.run_dir: str | None = None
        self.workload_pid: int | None = None
        self.channel: socket.socket | None = None
        self.profile: dict | None = None  # what the started interpreter was made for
        self.startup_fds: tuple[int, int] | None = None
        if profile is not None:
            try:
                self._prestart(profile)
            except OSError:
                self._drop_prestarted()  # e.g. the working directory is gone
        if self.workload_pid is None:
            # Forked now, while idle, to wait for its request: a fork of a Python
            # process costs about a millisecond we need not spend later.
            self._fork_waiting()

    def _fork_waiting(self) -> None:
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.workload_pid = os.fork()
        if self.workload_pid == 0:
            for fd in self.inherited:
                os.close(fd)
            self.channel.close()
            _await_workload(theirs, self.cgroup, self.home_netns)
        theirs.close()

    def _make_run_dir(self, workdir: str) -> str:
        # Root's until the request: a run of the same user must not plant files (a
        # module on sys.path[0], say) where the next run will look for them.
        path = tempfile.mkdtemp(prefix=f"run-{host_tag(self.host_pid)}-", dir=workdir)
        os.mkdir(os.path.join(path, "tmp"), 0o700)
        self.run_dir = path
        return path

    def _prestart(self, profile: dict) -> None:
        """Start Python on the bootstrap (:mod:`._prestarted`) in this spare's run
        directory, confined as the run will be except for its user and limits: it
        runs as root until the request (so no run of the unprivileged user can signal
        or trace it) and gets the limits from here when the request comes."""
        run_dir = self._make_run_dir(profile["workdir"])
        path = os.path.join(run_dir, profile["filename"])
        with open(PRESTARTED) as f:
            bootstrap = f.read()
        argv = [profile["argv0"], path]
        bootstrap += (f"\n_symbi_prestarted({profile['uid']!r}, {profile['gid']!r}, "
                      f"{profile['executable']!r}, {argv!r})\n")
        _write_new(path, bootstrap.encode())
        env = _run_environment(profile["env"], run_dir)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                if self.cgroup is not None and profile.get("use_cgroup", True):
                    self.cgroup.join(os.getpid())
                os.chdir(run_dir)
                if self.home_netns is not None and not profile["new_netns"]:
                    # Made for runs allowed the network: out of the empty namespace.
                    if _libc.setns(self.home_netns, CLONE_NEWNET) != 0:
                        os._exit(126)
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                # Pipes, as the run's will be: Python chooses its buffering at start.
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.dup2(theirs.fileno(), 3)
                for fd in range(4):
                    os.set_inheritable(fd, True)
                os.closerange(4, 65536)
                _default_signals()
                os.execve(profile["executable"], argv, env)
            finally:
                os._exit(127)
        for fd in (out_w, err_w):
            os.close(fd)
        theirs.close()
        self.workload_pid, self.profile, self.startup_fds = pid, profile, (out_r, err_r)

    def _prestarted_ready(self, timeout: float = 10.0) -> bool:
        """Whether the started interpreter is waiting in its bootstrap, silent."""
        poller = select.poll()
        poller.register(self.channel, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            return False
        try:
            if self.channel.recv(16) != b"r":
                return False
        except OSError:
            return False
        # Anything it wrote while starting (a warning from a .pth file, say) belongs
        # to the run: a fresh interpreter will write it again where the run sees it.
        for fd in self.startup_fds or ():
            if select.select([fd], [], [], 0)[0]:
                return False
        return True

    def _drop_prestarted(self) -> None:
        """Kill an interpreter started for a request that cannot use it."""
        if self.workload_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.workload_pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        for fd in self.startup_fds or ():
            os.close(fd)
        if self.channel is not None:
            self.channel.close()
        self.workload_pid = self.channel = self.profile = self.startup_fds = None

    def _fresh_instead(self) -> bool:
        """Give up the started interpreter for a waiting process that will exec a
        fresh one (returns False: the run is not served by a started interpreter)."""
        self._drop_prestarted()
        self._fork_waiting()
        return False

    def _send_start(self, message: bytes, fds: list[int]) -> None:
        self.channel.sendmsg(
            [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        )

    def _prepare(self, req: dict, code_fd: int) -> bool:
        """Pick the run's workload and directory and write its code. True when the
        started interpreter takes the run."""
        # Someone may have removed the working directory since this spare made its
        # run directory there: then it and its interpreter are of no use.
        intact = self.run_dir is not None and _own_directory(self.run_dir)
        prestarted = (
            self.profile is not None
            and intact
            and req.get("prestart") == "use"
            and profile_of(req) == self.profile
            and self._prestarted_ready()
        )
        if not prestarted and self.profile is not None:
            self._fresh_instead()
        if self.run_dir is not None and (
            not intact or os.path.dirname(self.run_dir) != req["workdir"]
        ):
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        run_dir = self.run_dir or self._make_run_dir(req["workdir"])
        path = os.path.join(run_dir, req["filename"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # the bootstrap, read and compiled by now
        _write_new(path, _read_all(code_fd))
        if req.get("uid") is not None:
            for node in (run_dir, os.path.join(run_dir, "tmp"), path):
                os.chown(node, req["uid"], req["gid"])
        req.update(cwd=run_dir, argv=[req["argv0"], path],
                   env=_run_environment(req["env"], run_dir))
        return prestarted

    def run(
        self,
        req: dict,
        out_fd: int,
        err_fd: int,
        status_fd: int,
        code_fd: int,
        on_started,
        in_fd: int | None = None,
        on_profile=None,
    ) -> None:
        """Run ``req``. ``on_started()`` is called once the run has started (time to
        fork the next spare); ``on_profile(profile)`` when the request says what later
        spares should start an interpreter for (None: nothing)."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGUSR1, self._on_cancel)
        signal.signal(signal.SIGTERM, self._on_cancel)

        def emit(event: dict) -> None:
            try:
                os.write(status_fd, (json.dumps(event) + "\n").encode())
            except OSError:
                pass

        wanted = req.get("prestart")
        if on_profile is not None and wanted in ("use", "off"):
            profile = profile_of(req) if wanted == "use" else None
            if profile != self.profile:
                on_profile(profile)
        try:
            prestarted = self._prepare(req, code_fd)
        except OSError as exc:
            emit({"event": "error", "message": f"cannot prepare the run directory: {exc}"})
            self.discard()
            return
        finally:
            os.close(code_fd)
        enforcement: dict[str, str] = {}
        if self.home_netns is not None:
            if req.get("new_netns"):
                enforcement["network"] = "empty network namespace"
        elif req.get("new_netns"):
            enforcement["network"] = "not enforced: a network namespace needs root"
        # An unused group is removed with the others at the end: the waiting workload
        # process may still be inside it until it reads the request.
        cgroup = self.cgroup if req.get("use_cgroup", True) else None
        applied: dict[str, str] = {}
        limits = (req.get("memory_bytes"), req.get("pids"), req.get("cpu_cores"))
        if prestarted and cgroup is not None and req.get("memory_bytes"):
            usage = cgroup.memory_usage()
            if usage is not None and req["memory_bytes"] <= usage:
                # The started interpreter already holds more than the memory limit
                # allows (v1 would refuse the limit, v2 kill it); a fresh interpreter
                # meets the limit from its first page, as without one.
                prestarted = self._fresh_instead()
        if cgroup is not None:
            try:
                applied = cgroup.apply(*limits)
            except OSError as exc:
                cgroup = None
                self.cgroup_error = str(exc)
        enforcement.update(self._fallbacks(req, cgroup, applied))
        if self.cgroup_error:
            enforcement["cgroup_error"] = self.cgroup_error

        if prestarted:
            try:
                for name, value in req["rlimits"].items():
                    resource.prlimit(self.workload_pid, RLIMITS[name], soft_hard(value))
            except (OSError, ValueError):
                # A limit the host does not allow: a fresh interpreter fails to start
                # and says so, as it would without a started one.
                prestarted = self._fresh_instead()
        passed = [out_fd, err_fd] + ([in_fd] if in_fd is not None else [])
        if prestarted and cgroup is not None:
            cgroup.reset_peak()  # what its start-up touched is counted in memory.usage
        started = time.monotonic()
        if prestarted:
            try:
                self._send_start(b"g", passed)
            except OSError:
                # It died since it said it was ready: a fresh interpreter takes the run.
                prestarted = self._fresh_instead()
        if not prestarted:
            req["join_cgroup"] = cgroup is not None
            self._send_start(json.dumps(req).encode(), passed)
        pid = self.workload_pid
        if self.home_netns is not None:
            os.close(self.home_netns)
        self.channel.close()
        if self.startup_fds:
            for fd in self.startup_fds:
                os.close(fd)
        for fd in passed:
            os.close(fd)
        started_event = {"event": "started", "pid": pid, "monitor_pid": os.getpid(),
                         "enforcement": enforcement, "cwd": req["cwd"],
                         "prestarted": prestarted}
        if cgroup is not None:
            # A kernel reads its worker's usage from these between cells.
            started_event["cgroup"] = {"version": cgroup.version, "paths": cgroup.paths}
        emit(started_event)
        # Only now ask for a replacement spare: its fork must not delay this run.
        on_started()

        timeout = req.get("timeout")
        deadline = started + timeout if timeout else None
        cpu_limit = req.get("cpu_seconds_total") if "cpu" in applied else None
        status = rusage = None
        timed_out = cancelled = host_gone = cpu_exceeded = False
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        # POLLERR on the write end of the status pipe: the host has gone away.
        poller.register(status_fd, 0)
        while True:
            done, st, ru = os.wait4(pid, os.WNOHANG)
            if done:
                status, rusage = st, ru
                break
            now = time.monotonic()
            if self.cancel:
                cancelled = True
                break
            if deadline is not None and now >= deadline:
                timed_out = True
                break
            if cpu_limit:
                used = cgroup.cpu_usage_seconds()
                if used is not None and used >= cpu_limit:
                    cpu_exceeded = True
                    break
            wait = 0.1 if cpu_limit else 1.0
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            for fd, ev in poller.poll(int(wait * 1000) + 1):
                if fd == status_fd and ev & (select.POLLERR | select.POLLHUP):
                    host_gone = True
                elif fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
            if host_gone:
                break
        wall = time.monotonic() - started

        if cancelled:
            # Like Ctrl-C in a terminal first, so the code can show where it was.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)
            grace = time.monotonic() + float(req.get("interrupt_grace", 1.0))
            while time.monotonic() < grace:
                done, st, ru = os.wait4(pid, os.WNOHANG)
                if done:
                    status, rusage = st, ru
                    break
                time.sleep(0.01)
        reaped: dict[int, tuple] = {}
        stragglers = kill_tree(cgroup, reaped)
        if status is None and pid in reaped:
            status, rusage = reaped[pid]
        if host_gone:
            if self.cgroup is not None:
                self.cgroup.remove()
            if req.get("remove_cwd"):
                shutil.rmtree(req["cwd"], ignore_errors=True)
            os._exit(0)
        tree = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = {
            "event": "exit",
            "wait_status": status,
            "exit_code": os.waitstatus_to_exitcode(status) if status is not None else None,
            "timed_out": timed_out,
            "cancelled": cancelled,
            "cpu_exceeded": cpu_exceeded,
            "wall_seconds": wall,
            "cpu_user_seconds": tree.ru_utime,
            "cpu_system_seconds": tree.ru_stime,
            "maxrss_bytes": tree.ru_maxrss * 1024,
            "main_maxrss_bytes": rusage.ru_maxrss * 1024 if rusage else None,
            "stragglers_killed": stragglers,
            "cgroup_version": cgroup.version if cgroup else None,
        }
        if cgroup is not None:
            result["peak_memory_bytes"] = cgroup.peak_memory()
            result["oom_kills"] = cgroup.oom_kills()
            result["pids_limit_hits"] = cgroup.pids_limit_hits()
            result["cgroup_cpu_seconds"] = cgroup.cpu_usage_seconds()
        emit(result)
        # Every process of the run is dead (kill_tree checked), so removing the empty
        # groups and the run directory can follow the report instead of delaying it.
        if self.cgroup is not None:
            self.cgroup.remove()
        if req.get("remove_cwd"):
            # fd-based, never follows the links the code may have planted
            shutil.rmtree(req["cwd"], ignore_errors=True)

    def _fallbacks(self, req: dict, cgroup: RunCgroup | None, applied: dict) -> dict:
        """Say how each cgroup-preferring limit is enforced; where the run's cgroup
        could not take it, fall back to an rlimit in ``req`` or report it."""
        enforcement: dict[str, str] = {}
        version = cgroup.version if cgroup is not None else None
        why = "cgroups are off" if not req.get("use_cgroup", True) else "no cgroup for it"
        rlimits = req.setdefault("rlimits", {})
        if req.get("memory_bytes"):
            if "memory" in applied:
                enforcement["memory"] = f"cgroup v{version} (resident memory)"
            else:
                rlimits["as"] = req["memory_bytes"]
                enforcement["memory"] = "rlimit (RLIMIT_AS, address space)"
        if req.get("cpu_seconds_total"):
            if cgroup is not None and cgroup.cpu_usage_seconds() is not None:
                applied["cpu"] = "cgroup"
                enforcement["cpu"] = "cgroup (whole tree) and RLIMIT_CPU"
            else:
                enforcement["cpu"] = "rlimit (RLIMIT_CPU, per process)"
        if req.get("pids"):
            if "processes" in applied:
                enforcement["processes"] = f"cgroup v{version} (pids.max)"
            elif (req.get("uid") if req.get("uid") is not None else os.geteuid()) != 0:
                rlimits["nproc"] = req["pids"]
                enforcement["processes"] = "rlimit (RLIMIT_NPROC, counts all of the user's)"
            else:
                enforcement["processes"] = f"not enforced: root, and {why}"
        if req.get("cpu_cores"):
            if "cpu_cores" in applied:
                enforcement["cpu_cores"] = f"cgroup v{version} (CPU quota)"
            else:
                enforcement["cpu_cores"] = f"not enforced: {why}"
        return enforcement

    def _on_cancel(self, signum: int, frame: object) -> None:
        self.cancel = True

    def discard(self) -> None:
        """Release an unused spare: its workload, its run directory, its groups."""
        if self.profile is not None:
            self._drop_prestarted()
        elif self.channel is not None:
            self.channel.close()  # the waiting workload process sees EOF and exits
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.cgroup is not None:
            self.cgroup.remove()


# --------------------------------------------------------------------------- server
def serve(sock: socket.socket, host_pid: int, spares: int = 1) -> None:
    """Keep ``spares`` monitors forked in advance, each waiting on the socket, so a
    request costs no fork of the supervisor; replace each one that takes a request.
    Exit when the host closes its end.

    Spares tell this process on ``news`` (one message each): ``+`` replace me, ``q``
    the host is gone, ``p`` + JSON the profile later spares start an interpreter for.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # monitors are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the notebook is not for us
    probe = probe_cgroups()
    reaped = reap_stale(probe)
    sock.send(json.dumps(
        {"event": "ready", "pid": os.getpid(), "cgroup": probe, "reaped": reaped}
    ).encode())
    # The host answers with what the first spares should start an interpreter for.
    profile = json.loads(sock.recv(1 << 20) or b"{}").get("profile")
    # Frozen objects are never touched by the collector, so forked monitors share
    # their pages with us instead of copying them.
    gc.freeze()
    news, spares_news = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for _ in range(spares):
        _fork_spare(sock, news, spares_news, probe, host_pid, profile)
    while True:
        try:
            message = news.recv(1 << 20)
        except InterruptedError:
            continue
        if not message or message == b"q":
            return  # a spare saw EOF: the host is gone or done with us
        if message[:1] == b"p":
            profile = json.loads(message[1:])
        else:
            _fork_spare(sock, news, spares_news, probe, host_pid, profile)


def _fork_spare(
    sock: socket.socket,
    news: socket.socket,
    spares_news: socket.socket,
    probe: dict,
    host_pid: int,
    profile: dict | None,
) -> None:
    if os.fork() != 0:
        return
    try:
        gc.disable()
        news.close()
        # A kernel's shutdown may SIGTERM its process tree: a spare then removes what
        # it prepared instead of dying with it. Held back while it prepares, so it is
        # never caught with half of it made.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        spare = Monitor(probe, host_pid, (sock.fileno(), spares_news.fileno()), profile)
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            request = _receive(sock)
        except SystemExit:
            request = None
        if request is None:
            spare.discard()
            spares_news.send(b"q")
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.close()
        spare.inherited = (spares_news.fileno(),)
        req, (out_fd, err_fd, status_fd, code_fd, *in_fd) = request
        refilled = []

        def refill() -> None:
            if not refilled:
                refilled.append(True)
                spares_news.send(b"+")

        try:
            spare.run(req, out_fd, err_fd, status_fd, code_fd, on_started=refill,
                      in_fd=in_fd[0] if in_fd else None,
                      on_profile=lambda p: spares_news.send(b"p" + json.dumps(p).encode()))
        finally:
            refill()  # even if this run failed early, the next request needs a spare
    finally:
        os._exit(0)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _receive(sock: socket.socket, nfds: int = 4) -> tuple[dict, list[int]] | None:
    """One request with its ``nfds`` descriptors, and optionally one more (a worker's
    stdin); None at EOF."""
    size = array.array("i").itemsize
    while True:
        try:
            msg, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE((nfds + 1) * size))
        except InterruptedError:
            continue
        if not msg:
            return None
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % size]))
        if len(fds) in (nfds, nfds + 1):
            return json.loads(msg), fds
        for fd in fds:
            os.close(fd)


def main() -> None:
    # Orphans of a monitor killed from outside come here rather than to init.
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
