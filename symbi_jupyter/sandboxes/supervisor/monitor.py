"""The monitor: a child subreaper that owns one run.

Forked in advance as a spare (:class:`~.spare.Spare`), it prepares what is slow (a
network namespace, the run's cgroups, and for the usual Python run the run directory
and a started interpreter). When a request comes it runs it in steps: prepare the
directory and code, apply the limits, start the workload, watch it (wall clock, CPU,
cancel, the host's going away), stop the whole tree, report (those three:
:mod:`.watch`), clean up.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

from . import channel, mounts, rundir, seccomp, workdir_view
from .cgroups import RunCgroup
from .channel import StatusPipe
from .proctree import RLIMITS, soft_hard
from .spare import Spare
from .watch import exit_report, stop_run, watch_run
from .workload import code_arguments, prestarted_ready, profile_of, run_environment

SYSCALLS = (
    "seccomp (refused: new user namespaces, ptrace, bpf, the keyring, io_uring, "
    "perf events, modules, kexec)"
)


class Monitor(Spare):
    """Owns one run. Created as a spare before any request arrives, so the slow parts
    are ready when one does; :meth:`run` then takes the request through its steps."""

    #: how the run is shown the working directory's files (:mod:`.workdir_view`)
    view_enforcement: dict[str, str]

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
            and self.channel is not None  # always, with a profile
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
        path = os.path.join(run_dir, req["filename"])
        args = req.get("args")
        names: tuple[str, ...]
        if args is None:
            code = rundir.write_file(run_dir, req["filename"], _read_all(code_fd))
            # A cell as at every tier; a kernel's worker (its own code) on its path.
            argv = [req["argv0"], *(code_arguments(path) if req.get("cell") else [path])]
            names = (req["filename"], rundir.TMP)
        else:
            # A command run without a shell: its own arguments, no file to write.
            code = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            argv, names = [req["argv0"], *args], (rundir.TMP,)
        try:
            self.view_enforcement = self._show_workdir(run_dir, req["workdir"])
            if req.get("uid") is not None:
                rundir.hand_over(run_dir, names, req["uid"], req["gid"])
            # Last: root has written all it writes through paths by now.
            if self.staging is not None:
                for path, read_only in req.get("binds", ()):
                    mounts.bind_host(mounts.host_view(self.staging, path), path, read_only)
        except BaseException:
            os.close(code)
            raise
        req.update(cwd=run_dir, argv=argv, env=run_environment(req["env"], run_dir))
        return prestarted, code

    def _show_workdir(self, run_dir: str, workdir: str) -> dict[str, str]:
        """Link the working directory's files into the run directory (by root, before
        it is handed over), and say so. Listed as the host sees it: the run's own view
        of a working directory in /tmp is an overlay, whose listing may be stale."""
        seen = mounts.host_view(self.staging, workdir) if self.staging is not None else workdir
        names = workdir_view.entries(seen)
        if names:
            rundir.link(run_dir, workdir, names)
        return workdir_view.note(
            names, "linked into the run directory (each written only as its mode lets the run)"
        )

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
            **self.view_enforcement,
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
            assert self.workload_pid is not None  # the started interpreter
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
        assert self.channel is not None  # the workload's, forked or started
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

    def _clean_up(self, req: dict[str, Any]) -> None:
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.lease is not None and req.get("uid") == self.lease.uid:
            # Before the uid goes back to the block with this process.
            self.lease.hand_back([path for path, ro in req.get("binds", ()) if not ro])
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
        on_profile: Callable[[dict[str, Any] | None], object] | None = None,
        on_identities: Callable[[dict[str, Any] | None], object] | None = None,
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
        assert pid is not None
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

        watch = watch_run(
            pid, req, cgroup, applied, started, status_fd, wake_r, lambda: self.cancel
        )
        stragglers = stop_run(pid, req, cgroup, watch)
        if watch.host_gone:
            self._clean_up(req)
            os._exit(0)
        status.emit(exit_report(watch, cgroup, stragglers, self.staging is not None))
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


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
