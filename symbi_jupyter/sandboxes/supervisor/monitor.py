"""The monitor: a child subreaper that owns one run.

Forked in advance as a spare, it prepares what is slow (a network namespace, the
run's cgroups, and for the usual Python run the run directory and a started
interpreter). When a request comes it runs it in steps: prepare the directory and
code, apply the limits, start the workload, watch it (wall clock, CPU, cancel, the
host's going away), stop the whole tree, report, clean up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

from . import channel, identity, mounts, rundir, seccomp
from .cgroups import RunCgroup
from .channel import StatusPipe
from .proctree import (
    CLONE_NEWNET,
    PR_SET_CHILD_SUBREAPER,
    RLIMITS,
    host_tag,
    kill_tree,
    libc,
    prctl,
    soft_hard,
)
from .workload import (
    await_request,
    bootstrap_source,
    prestarted_ready,
    profile_of,
    run_environment,
    start_prestarted,
)

#: The run's tmpfs until its request sizes it.
PRESET_TMPFS_BYTES = 64 << 20
#: Free space on the run's tmpfs below which it counts as full (a few pages).
DISK_FULL_BYTES = 16 << 10
SYSCALLS = (
    "seccomp (refused: new user namespaces, ptrace, bpf, the keyring, io_uring, "
    "perf events, modules, kexec)"
)


@dataclasses.dataclass
class Watch:
    """How the watch of a run ended."""

    started: float
    status: int | None = None
    rusage: Any = None
    timed_out: bool = False
    cancelled: bool = False
    host_gone: bool = False
    cpu_exceeded: bool = False
    wall: float = 0.0


class Monitor:
    """Owns one run. Created as a spare before any request arrives, so the slow parts
    are ready when one does."""

    def __init__(
        self,
        probe: dict[str, Any],
        host_pid: int,
        inherited: tuple[int, ...] = (),
        profile: dict[str, Any] | None = None,
        identities: dict[str, Any] | None = None,
        private_mounts: bool = False,
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
            if libc.unshare(CLONE_NEWNET) != 0:
                os.close(self.home_netns)
                self.home_netns = None
        self.private_mounts = private_mounts
        self.home_mntns: int | None = None
        self.staging: str | None = None  # the run's tmpfs, where runs are private
        if os.geteuid() == 0 and private_mounts:
            # A way back, should the host mount something where runs must see it.
            self.home_mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self.mount_enforcement = self._private_mounts()
        if probe.get("version"):
            try:
                self.cgroup = RunCgroup.create(probe, f"{host_tag(host_pid)}-{os.getpid()}")
            except OSError as exc:
                self.cgroup_error = str(exc)
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        # Not SIG_IGN (inherited from the supervisor): that would reap the workload
        # behind our back and lose its exit status.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.run_dir: str | None = None
        self.run_dir_kept = False
        self.workload_pid: int | None = None
        self.channel: socket.socket | None = None
        self.profile: dict[str, Any] | None = None  # what the started interpreter is for
        self.startup_fds: tuple[int, int] | None = None
        # This run's own host uid, leased now while idle (a /proc scan, about 2 ms).
        self.lease: identity.Lease | None = None
        self.lease_from: dict[str, Any] | None = None
        if identities is not None:
            with contextlib.suppress(OSError):
                self._lease(identities)
        if profile is not None:
            try:
                self._prestart(profile)
            except OSError:
                self._drop_prestarted()  # e.g. the working directory is gone
        if self.workload_pid is None:
            # Forked now, while idle, to wait for its request: a fork of a Python
            # process costs about a millisecond we need not spend later.
            self._fork_waiting()

    def _private_mounts(self) -> dict[str, str]:
        """The run's own /proc view and tmpfs (root only): made now, so that the
        workload and a started interpreter are born in them."""
        self.staging = None
        if os.geteuid() != 0:
            why = "not enforced: a mount namespace needs root"
        elif not self.private_mounts:
            why = "not enforced: NativeSandbox.private_mounts is off"
        else:
            try:
                self.staging = mounts.make_private(PRESET_TMPFS_BYTES)
            except OSError as exc:
                why = f"not enforced: {exc}"
        if self.staging is None:
            return {"process_view": why, "private_tmp": why, "disk": why}
        return {
            "process_view": "its own processes only (/proc hidepid=invisible)",
            "private_tmp": "/tmp (an overlay on the host's), /var/tmp and /dev/shm "
            "private, gone with the run",
        }

    def _renew_mounts(self) -> None:
        """Give up what was prepared in a namespace that no longer shows the host's
        working directory, and make a fresh one from the host's."""
        if self.profile is not None:
            self._drop_prestarted()
        elif self.channel is not None:
            self.channel.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.workload_pid, 0)
        if self.run_dir is not None:
            self._remove_run_dir(self.run_dir)
            self.run_dir = None
        mounts.rejoin(self.home_mntns)
        self.mount_enforcement = self._private_mounts()
        self._fork_waiting()

    # ------------------------------------------------------------------ the workload
    def _fork_waiting(self) -> None:
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.workload_pid = os.fork()
        if self.workload_pid == 0:
            for fd in self.inherited:
                os.close(fd)
            self.channel.close()
            await_request(theirs, self.cgroup, self.home_netns)
        theirs.close()

    def _make_run_dir(self, workdir: str, keep: bool = False) -> str:
        """A run directory, root's until the request: a run of the same user must not
        plant files (a module on sys.path[0], say) where the next run will look for
        them. Where runs are private it is on the run's tmpfs, unless the host keeps
        it (``keep``): then it is the host's."""
        prefix = f"run-{host_tag(self.host_pid)}-"
        if self.staging is None:
            self.run_dir = rundir.make(workdir, prefix)
            return self.run_dir
        path = tempfile.mkdtemp(prefix=prefix, dir=workdir)
        if keep:
            host = mounts.host_view(self.staging, path)
            if host != path:  # covered by a private directory: make it the host's
                os.mkdir(host, 0o700)
                mounts.bind_host(host, path, read_only=False)
        else:
            mounts.bind_run_dir(self.staging, path)
        os.mkdir(os.path.join(path, rundir.TMP), 0o700)
        self.run_dir, self.run_dir_kept = path, keep
        return path

    def _remove_run_dir(self, path: str) -> None:
        # fd-based, never follows the links the code may have planted
        shutil.rmtree(path, ignore_errors=True)
        if self.staging is not None:
            # What is left is the directory it was bound over.
            with contextlib.suppress(OSError):
                mounts.unbind(path)
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def _lease(self, identities: dict[str, Any]) -> identity.Lease:
        """This run's uid from the block ``identities`` names (kept if it is from there)."""
        if self.lease is None or self.lease_from != identities:
            if self.lease is not None:
                self.lease.release()
            self.lease, self.lease_from = identity.lease(identities), identities
        return self.lease

    def _run_ids(self, spec: dict[str, Any]) -> tuple[int | None, int | None]:
        """The uid and gid a request or profile runs as: its own lease, a named
        user's, or None (no change: the host is not root, or runs as root)."""
        if spec.get("identity"):
            lease = self._lease(spec["identity"])
            return lease.uid, lease.gid
        return spec.get("uid"), spec.get("gid")

    def _prestart(self, profile: dict[str, Any]) -> None:
        """Start Python on the bootstrap in this spare's run directory: it runs as root
        until the request (so no run of another uid can signal or trace it) and gets
        the limits from here when the request comes."""
        uid, gid = self._run_ids(profile)
        run_dir = self._make_run_dir(profile["workdir"])
        path = os.path.join(run_dir, profile["filename"])
        os.close(
            rundir.write_file(
                run_dir, profile["filename"], bootstrap_source(profile, path, uid, gid)
            )
        )
        self.workload_pid, self.channel, self.startup_fds = start_prestarted(
            profile, run_dir, path, self.cgroup, self.home_netns
        )
        self.profile = profile

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

    # ------------------------------------------------------------------ a run, in steps
    def _prepare(self, req: dict[str, Any], code_fd: int) -> tuple[bool, int]:
        """Pick the run's workload and directory, write its code and hand the directory
        to the run's user. Returns whether the started interpreter takes the run, and
        a read-only descriptor of the code file."""
        if self.home_mntns is not None and not os.path.isdir(req["workdir"]):
            # A working directory the host made after this spare made its namespace
            # (where the host's root is not a shared mount).
            self._renew_mounts()
        # Someone may have removed the working directory since this spare made its
        # run directory there: then it and its interpreter are of no use.
        intact = self.run_dir is not None and rundir.still_ours(self.run_dir)
        prestarted = (
            self.profile is not None
            and intact
            and req.get("prestart") == "use"
            and profile_of(req) == self.profile
            and prestarted_ready(self.channel, self.startup_fds or ())
        )
        if not prestarted and self.profile is not None:
            self._fresh_instead()
        keep = not req.get("remove_cwd", True)
        if self.run_dir is not None and (
            not intact
            or os.path.dirname(self.run_dir) != req["workdir"]
            or self.run_dir_kept != keep
        ):
            if prestarted:
                prestarted = self._fresh_instead()  # it was started in that directory
            self._remove_run_dir(self.run_dir)
            self.run_dir = None
        run_dir = self.run_dir or self._make_run_dir(req["workdir"], keep)
        # Before the code is written: code larger than the disk limit does not fit.
        self.disk_enforcement = self._limit_disk(req)
        req["uid"], req["gid"] = self._run_ids(req)
        code = rundir.write_file(run_dir, req["filename"], _read_all(code_fd))
        try:
            if req.get("uid") is not None:
                rundir.hand_over(run_dir, (req["filename"], rundir.TMP), req["uid"], req["gid"])
            # Last: root has written all it writes through paths by now.
            if self.staging is not None:
                for path, read_only in req.get("binds", ()):
                    mounts.bind_host(mounts.host_view(self.staging, path), path, read_only)
        except BaseException:
            os.close(code)
            raise
        path = os.path.join(run_dir, req["filename"])
        req.update(cwd=run_dir, argv=[req["argv0"], path], env=run_environment(req["env"], run_dir))
        return prestarted, code

    def _apply_limits(
        self, req: dict[str, Any], prestarted: bool
    ) -> tuple[RunCgroup | None, dict[str, str], dict[str, str], bool]:
        """Set the run's cgroup limits, and fall back to rlimits in ``req`` where they
        cannot be; returns the cgroup in use, what it applied, the enforcement notes
        and whether the started interpreter still takes the run."""
        enforcement: dict[str, str] = {
            "syscalls": SYSCALLS
            if seccomp.supported()
            else "not enforced: the seccomp filter is for x86-64 only",
            **self.mount_enforcement,
        }
        enforcement["disk"] = self.disk_enforcement
        if self.home_netns is not None:
            if req.get("new_netns"):
                enforcement["network"] = "empty network namespace"
        elif req.get("new_netns"):
            enforcement["network"] = "not enforced: a network namespace needs root"
        # An unused group is removed with the others at the end: the waiting workload
        # process may still be inside it until it reads the request.
        cgroup = self.cgroup if req.get("use_cgroup", True) else None
        applied: dict[str, str] = {}
        if prestarted and cgroup is not None and req.get("memory_bytes"):
            usage = cgroup.memory_usage()
            if usage is not None and req["memory_bytes"] <= usage:
                # The started interpreter already holds more than the memory limit
                # allows (v1 would refuse the limit, v2 kill it); a fresh interpreter
                # meets the limit from its first page, as without one.
                prestarted = self._fresh_instead()
        if cgroup is not None:
            try:
                applied = cgroup.apply(
                    req.get("memory_bytes"), req.get("pids"), req.get("cpu_cores")
                )
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
        return cgroup, applied, enforcement, prestarted

    def _limit_disk(self, req: dict[str, Any]) -> str:
        """Size the run's tmpfs to its disk limit; say how the limit is kept."""
        if self.staging is None:
            return self.mount_enforcement["disk"]
        size = req.get("disk_bytes")
        try:
            mounts.resize(size)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot set the disk limit ({size} bytes)") from None
        if not size:
            return "not enforced: no disk limit was asked for"
        how = (
            f"tmpfs of {size / (1 << 20):g} MiB for the run directory, /tmp's changes, "
            "/var/tmp and /dev/shm (RAM, counted as the run's memory too)"
        )
        if self.run_dir_kept:
            how += "; the kept run directory is the host's, not counted"
        return how

    def _start(
        self,
        req: dict[str, Any],
        cgroup: RunCgroup | None,
        prestarted: bool,
        passed: list[int],
        code: int,
    ) -> tuple[float, bool]:
        """Let the workload go; returns when it was let go and whether the started
        interpreter took the run."""
        if prestarted and cgroup is not None:
            cgroup.reset_peak()  # what its start-up touched is counted in memory.usage
        started = time.monotonic()
        if prestarted:
            try:
                channel.send(self.channel, b"g", [*passed, code])
            except OSError:
                # It died since it said it was ready: a fresh interpreter takes the run.
                prestarted = self._fresh_instead()
        if not prestarted:
            req["join_cgroup"] = cgroup is not None
            channel.send(self.channel, json.dumps(req).encode(), passed)
        if self.home_netns is not None:
            os.close(self.home_netns)
        self.channel.close()
        for fd in (*(self.startup_fds or ()), *passed, code):
            os.close(fd)
        return started, prestarted

    def _watch(
        self,
        pid: int,
        req: dict[str, Any],
        cgroup: RunCgroup | None,
        applied: dict[str, str],
        started: float,
        status_fd: int,
        wake_r: int,
    ) -> Watch:
        """Wait for the workload to end, the wall clock or CPU limit to pass, a cancel,
        or the host to go away."""
        watch = Watch(started)
        timeout = req.get("timeout")
        deadline = started + timeout if timeout else None
        cpu_limit = req.get("cpu_seconds_total") if "cpu" in applied else None
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        # POLLERR on the write end of the status pipe: the host has gone away.
        poller.register(status_fd, 0)
        while True:
            done, st, ru = os.wait4(pid, os.WNOHANG)
            if done:
                watch.status, watch.rusage = st, ru
                break
            now = time.monotonic()
            if self.cancel:
                watch.cancelled = True
                break
            if deadline is not None and now >= deadline:
                watch.timed_out = True
                break
            if cpu_limit and cgroup is not None:
                used = cgroup.cpu_usage_seconds()
                if used is not None and used >= cpu_limit:
                    watch.cpu_exceeded = True
                    break
            wait = 0.1 if cpu_limit else 1.0
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            for fd, ev in poller.poll(int(wait * 1000) + 1):
                if fd == status_fd and ev & (select.POLLERR | select.POLLHUP):
                    watch.host_gone = True
                elif fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
            if watch.host_gone:
                break
        watch.wall = time.monotonic() - started
        return watch

    def _stop(self, pid: int, req: dict[str, Any], cgroup: RunCgroup | None, watch: Watch) -> int:
        """End the whole tree (after SIGINT and a grace period when cancelled);
        returns how many stragglers were killed."""
        if watch.cancelled:
            # Like Ctrl-C in a terminal first, so the code can show where it was.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGINT)
            grace = time.monotonic() + float(req.get("interrupt_grace", 1.0))
            while time.monotonic() < grace:
                done, st, ru = os.wait4(pid, os.WNOHANG)
                if done:
                    watch.status, watch.rusage = st, ru
                    break
                time.sleep(0.01)
        reaped: dict[int, tuple] = {}
        stragglers = kill_tree(cgroup, reaped)
        if watch.status is None and pid in reaped:
            watch.status, watch.rusage = reaped[pid]
        return stragglers

    @staticmethod
    def _report(
        watch: Watch, cgroup: RunCgroup | None, stragglers: int, staging: bool
    ) -> dict[str, Any]:
        tree = resource.getrusage(resource.RUSAGE_CHILDREN)
        status = watch.status
        result: dict[str, Any] = {
            "event": "exit",
            "wait_status": status,
            "exit_code": os.waitstatus_to_exitcode(status) if status is not None else None,
            "timed_out": watch.timed_out,
            "cancelled": watch.cancelled,
            "cpu_exceeded": watch.cpu_exceeded,
            "wall_seconds": watch.wall,
            "cpu_user_seconds": tree.ru_utime,
            "cpu_system_seconds": tree.ru_stime,
            "maxrss_bytes": tree.ru_maxrss * 1024,
            "main_maxrss_bytes": watch.rusage.ru_maxrss * 1024 if watch.rusage else None,
            "stragglers_killed": stragglers,
            "cgroup_version": cgroup.version if cgroup else None,
        }
        disk = mounts.usage() if staging else None
        if disk is not None:
            used, free = disk
            # Full to the last pages: a write failed, or would have.
            result.update(disk_used_bytes=used, disk_full=free < DISK_FULL_BYTES)
        if cgroup is not None:
            result["peak_memory_bytes"] = cgroup.peak_memory()
            result["oom_kills"] = cgroup.oom_kills()
            result["pids_limit_hits"] = cgroup.pids_limit_hits()
            result["cgroup_cpu_seconds"] = cgroup.cpu_usage_seconds()
        return result

    def _clean_up(self, req: dict[str, Any]) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        if req.get("remove_cwd"):
            self._remove_run_dir(req["cwd"])

    def run(
        self,
        req: dict[str, Any],
        out_fd: int,
        err_fd: int,
        status_fd: int,
        code_fd: int,
        on_started: Callable[[], None],
        in_fd: int | None = None,
        on_profile: Callable[[dict[str, Any] | None], None] | None = None,
        on_identities: Callable[[dict[str, Any] | None], None] | None = None,
    ) -> None:
        """Run ``req``. ``on_started()`` is called once the run has started (time to
        fork the next spare); ``on_profile(profile)`` when the request says what later
        spares should start an interpreter for (None: nothing); ``on_identities`` when
        it takes its uid from another block than this spare leased from."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGUSR1, self._on_cancel)
        signal.signal(signal.SIGTERM, self._on_cancel)
        status = StatusPipe(status_fd)

        wanted = req.get("prestart")
        if on_profile is not None and wanted in ("use", "off"):
            profile = profile_of(req) if wanted == "use" else None
            if profile != self.profile:
                on_profile(profile)
        if on_identities is not None and req.get("identity") != self.lease_from:
            on_identities(req.get("identity"))
        try:
            prestarted, code = self._prepare(req, code_fd)
        except OSError as exc:
            status.emit({"event": "error", "message": f"cannot prepare the run directory: {exc}"})
            self.discard()
            return
        finally:
            os.close(code_fd)
        cgroup, applied, enforcement, prestarted = self._apply_limits(req, prestarted)
        passed = [out_fd, err_fd] + ([in_fd] if in_fd is not None else [])
        started, prestarted = self._start(req, cgroup, prestarted, passed, code)
        pid = self.workload_pid  # after _start: a fresh interpreter may have taken over
        started_event = {
            "event": "started",
            "pid": pid,
            "monitor_pid": os.getpid(),
            "enforcement": enforcement,
            "cwd": req["cwd"],
            "prestarted": prestarted,
        }
        if cgroup is not None:
            # A kernel reads its worker's usage from these between cells.
            started_event["cgroup"] = cgroup.report()
        status.emit(started_event)
        # Only now ask for a replacement spare: its fork must not delay this run.
        on_started()

        watch = self._watch(pid, req, cgroup, applied, started, status_fd, wake_r)
        stragglers = self._stop(pid, req, cgroup, watch)
        if watch.host_gone:
            self._clean_up(req)
            os._exit(0)
        status.emit(self._report(watch, cgroup, stragglers, self.staging is not None))
        # Every process of the run is dead (kill_tree checked), so removing the empty
        # groups and the run directory can follow the report instead of delaying it.
        self._clean_up(req)

    def _fallbacks(
        self, req: dict[str, Any], cgroup: RunCgroup | None, applied: dict[str, str]
    ) -> dict[str, str]:
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
            self._remove_run_dir(self.run_dir)
        if self.cgroup is not None:
            self.cgroup.remove()


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
