"""The :class:`NativeSandbox`: its traits, the supervisor process it starts and talks
to, and a run from request to result (or a kernel's worker)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pwd
import py_compile
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Float, Int, Unicode

from ... import policy
from ...errors import TierUnavailable
from ...limits import host_cores, within_cores
from ...result import ExecutionResult
from ...tiers import SecurityTier
from .. import supervisor
from .._follow import RunFollower
from .._sigint import SigintLatch
from ..base import Availability, ExecutionRequest, Sandbox, WorkerHandle
from ..supervisor import channel
from ..supervisor.proctree import host_tag, pid_alive, write_all
from ..supervisor.workload import RUN_DIR, profile_of
from .results import keep_run_dir, native_result
from .spec import MiB, check_reachable, native_environment, run_spec, volume_binds
from .worker_handle import NativeWorker


class NativeSandbox(Sandbox):
    """Runs code directly on the host (tier None) under rlimits and cgroups."""

    tier = SecurityTier.NONE
    #: a volume is a host directory the run reaches as itself, past its private /tmp
    supports_volumes = True

    run_as_user = Unicode(
        "",
        config=True,
        help="""When the orchestrator runs as root, who native code runs as. '' (the
        default): each run as its own uid, leased from RunIdentities' block, so that no
        run can signal, trace or write to another. A user name: every run as that
        user (runs can then reach one another). 'root': as root (root could undo
        every limit; RLIMIT_NPROC does not bind it).""",
    )
    use_cgroups = Enum(
        ["auto", "require", "never"],
        "auto",
        config=True,
        help="""Per-run cgroups (v1 or v2) give exact peak memory, a pids limit, a CPU
        quota and an exact kill-all. 'auto' uses them where the host allows and reports
        what falls back to rlimits; 'require' makes the tier unavailable without them.""",
    )
    interrupt_grace_seconds = Float(
        1.0,
        config=True,
        help="On interrupt, seconds between SIGINT to the code and killing its tree.",
    )
    prestart_interpreter = Bool(
        True,
        config=True,
        help="""Keep a Python interpreter started in advance, in the next run's directory
        and confinement, so a Python run does not wait for the interpreter to start
        (about 7 ms). It runs as root until the run's request, then drops to
        run_as_user; it serves only runs with the usual interpreter and environment
        (others start a fresh one, as with this off).""",
    )
    spare_runs = Int(
        2,
        min=1,
        config=True,
        help="""Runs prepared in advance (a monitor with the run's cgroups and network
        namespace, and with prestart_interpreter a started Python), each costing an
        idle process or two (about 10 MB with the interpreter). Two keep up with
        runs requested back to back, where one would still be starting; read when
        the supervisor starts.""",
    )
    private_mounts = Bool(
        True,
        config=True,
        help="""As root, each run gets a mount namespace of its own: a /proc that shows it
        only its own processes, and one tmpfs, gone with the run and as large as its
        disk limit (max_disk_mb), for its run directory, its private /var/tmp and
        /dev/shm and what it writes in /tmp (an overlay: it reads the host's /tmp).
        Off: none of these, and no disk limit. Read when the supervisor starts.""",
    )
    stop_on_output_limit = Bool(
        False,
        config=True,
        help="""Stop the run (killed_by='output') once a stream passes max_output_bytes.
        By default output past the cap is drained and discarded and the run goes on.""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._cgroup_probe: dict = {}
        self._reaped_dirs: set[Path] = set()
        # Compiled once here, so no run compiles it (runs may not write bytecode). An
        # installation we cannot write to was compiled by its installer, or costs a
        # compile per run: not worth an error.
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(str(policy.LINE_BUFFERING_DIR / "sitecustomize.py"), doraise=True)

    # ------------------------------------------------------------------ supervisor
    def _supervisor(self, profile: dict | None = None) -> socket.socket:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None and self._sock:
                return self._sock
            if self._sock is not None:
                # A dead supervisor's spare still waits on this socket: EOF releases it.
                self._sock.close()
                self._sock = None
            if self._proc is not None:
                self.log.warning(
                    "the native supervisor exited (%s); starting a new one", self._proc.returncode
                )
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._proc = subprocess.Popen(
                supervisor.command(
                    "__main__", str(theirs.fileno()), str(os.getpid()), str(self.spare_runs)
                ),
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                # Out of the kernel's process group: a killpg(SIGKILL) of the kernel
                # (jupyter_client's "shutdown now") must leave the supervisor time to
                # see the socket close and clean up.
                start_new_session=True,
            )
            theirs.close()
            hello = json.loads(ours.recv(1 << 16) or b"{}")
            if hello.get("event") != "ready":
                raise TierUnavailable("the native supervisor process failed to start")
            # What the first spares start an interpreter for (later runs teach it).
            ours.send(
                json.dumps(
                    {
                        "profile": profile,
                        "identity": self._identities(),
                        "private_mounts": self.private_mounts,
                    }
                ).encode()
            )
            self._cgroup_probe = hello["cgroup"]
            if hello.get("reaped"):
                self.log.warning("reaped run cgroups left by dead kernels: %s", hello["reaped"])
            self._sock = ours
            return ours

    def _identities(self) -> dict[str, Any] | None:
        """The block the supervisor's spares lease their runs' uids from, if any."""
        if os.geteuid() != 0 or self.run_as_user:
            return None
        try:
            return self.run_identities.check()
        except TierUnavailable:
            return None  # said by the run that needs it

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()  # the supervisor exits on EOF
                self._sock = None
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                self._proc = None

    def cgroup_version(self) -> int | None:
        self._supervisor()
        return self._cgroup_probe.get("version")

    def availability(self) -> Availability:
        if not sys.platform.startswith("linux"):
            return Availability(False, "the native tier's limits need Linux (rlimits, /proc)")
        try:
            version = self.cgroup_version()
        except OSError as exc:
            return Availability(False, f"cannot start the native supervisor: {exc}")
        details = {"cgroup": f"v{version}" if version else "none (rlimits only)"}
        if version is None and self.use_cgroups == "require":
            return Availability(
                False,
                "NativeSandbox.use_cgroups='require' but no writable cgroup hierarchy was "
                "found: run as root, or in a delegated cgroup v2 subtree "
                "(systemd-run --user --scope -p Delegate=yes ...)",
                details,
            )
        return Availability(True, "", details)

    # ------------------------------------------------------------------ running
    def run(self, request: ExecutionRequest) -> ExecutionResult:
        return self._run(request)

    def start_worker(self, request: ExecutionRequest) -> WorkerHandle:
        in_r, in_w = os.pipe()
        worker = NativeWorker(in_w)
        request.on_started = worker.started

        def serve() -> None:
            try:
                worker.result = self._run(request, stdin_fd=in_r)
            except BaseException as exc:  # reported by wait() or start_worker
                worker.error = exc
            finally:
                worker.ready.set()
                worker.done.set()

        threading.Thread(target=serve, name="symbi-native-worker", daemon=True).start()
        worker.ready.wait()
        # The monitor holds its own copy once it has started the worker.
        os.close(in_r)
        if worker.error is not None and worker.monitor_pid is None:
            os.close(in_w)
            raise worker.error
        return worker

    def _run(self, request: ExecutionRequest, stdin_fd: int | None = None) -> ExecutionResult:
        # The orchestrator decided and checked these; they are not checked again here.
        pol = request.policy
        workdir, real_exe, filename = pol.working_directory, pol.executable, pol.filename
        assert workdir is not None and real_exe is not None  # always decided for tier None
        who = self._run_as(workdir)
        if who:
            # Any leased uid is "other" to the interpreter's files, as the block's first.
            uid = who.get("uid", who.get("identity", {}).get("first"))
            check_reachable(real_exe, uid, who.get("gid", uid), self.run_as_user or "a leased uid")
        # A quota above the host's cores would promise what no cgroup can give.
        lowered, cores_note = within_cores(request.limits, host_cores())
        request = dataclasses.replace(request, limits=lowered)
        spec, enforcement = run_spec(request, self.use_cgroups, worker=stdin_fd is not None)
        if cores_note and "cpu_cores" not in enforcement:
            enforcement["cpu_cores"] = cores_note  # after how the monitor kept it
        # The monitor makes the run directory: it stands in the environment as RUN_DIR.
        env = native_environment(request.env, pol.env_passthrough, RUN_DIR)
        usual = (
            filename.endswith(".py")
            and not request.executable
            and not request.env
            and pol.arguments is None
            and pol.start_directory is None
        )
        if stdin_fd is not None or not usual:
            prestart = "skip"  # runs unlike the usual one do not change what spares start
        else:
            prestart = "use" if self.prestart_interpreter else "off"
        spec.update(
            executable=real_exe,
            argv0=pol.argv0,
            filename=filename,
            args=None if pol.arguments is None else list(pol.arguments),
            start_dir=pol.start_directory,
            workdir=str(workdir),
            binds=volume_binds(request.volumes, workdir),
            env=env,
            uid=who.get("uid"),
            gid=who.get("gid"),
            identity=who.get("identity"),
            prestart=prestart,
            cell=stdin_fd is None,  # else a kernel's worker
            # A worker is interrupted through its channel; stopping it is a kill.
            interrupt_grace=0 if stdin_fd is not None else self.interrupt_grace_seconds,
            remove_cwd=not request.keep_workdir,
        )
        # A supervisor started for this run prepares its first spares for runs like it.
        profile = profile_of(spec) if prestart == "use" else None
        sock = self._supervisor(profile)
        if self.use_cgroups == "require" and self.cgroup_version() is None:
            raise TierUnavailable(self.availability().reason)
        self._reap_run_dirs(workdir)
        # The stop button is handled in the loop whatever the host is doing when it
        # is pressed (in the main thread; a worker's thread gets no signals).
        with SigintLatch() as latch:
            result = self._execute(sock, spec, request, enforcement, stdin_fd, latch)
        result.language = request.language
        result.executable = real_exe
        return result

    def _reap_run_dirs(self, workdir: Path) -> None:
        """Remove run directories of hosts of this pid namespace that died mid-run
        (``run-<namespace>-<pid>-*``), once per working directory."""
        if workdir in self._reaped_dirs:
            return
        self._reaped_dirs.add(workdir)
        namespace = host_tag().split("-")[0]
        for path in workdir.glob(f"run-{namespace}-*-*"):
            pid = path.name.split("-")[2]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                self.log.warning("removed run directory left by a dead kernel: %s", path)

    def _run_as(self, workdir: Path) -> dict[str, Any]:
        """Who the run is: ``uid``/``gid`` of a named user, or ``identity``, the block
        its monitor leases the run's own uid from; nothing when not root."""
        if os.geteuid() != 0 or self.run_as_user == "root":
            return {}
        if self.run_as_user:
            try:
                entry = pwd.getpwnam(self.run_as_user)
            except KeyError:
                raise TierUnavailable(
                    f"NativeSandbox.run_as_user={self.run_as_user!r} does not exist on this "
                    "host; create it, or set the trait to '' (a uid of its own per run)"
                ) from None
            who: dict[str, Any] = {"uid": entry.pw_uid, "gid": entry.pw_gid}
        else:
            who = {"identity": self.run_identities.check()}
        # The unprivileged user must be able to reach its run directory.
        mode = workdir.stat().st_mode
        if mode & 0o111 != 0o111:
            os.chmod(workdir, (mode & 0o7777) | 0o111)
        return who

    def _execute(
        self,
        sock: socket.socket,
        spec: dict[str, Any],
        request: ExecutionRequest,
        enforcement: dict[str, str],
        stdin_fd: int | None,
        latch: SigintLatch,
    ) -> ExecutionResult:
        """Start the run on the supervisor and follow it to its end; ``latch`` turns
        the stop button into an event of the loop."""
        # A worker's stdout is its protocol: never capped or kept here.
        cap = math.inf if stdin_fd is not None else request.limits.max_output_bytes or 10 * MiB
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        st_r, st_w = os.pipe()
        code = os.memfd_create("symbi-cell", os.MFD_CLOEXEC)
        passed = [out_w, err_w, st_w, code] + ([stdin_fd] if stdin_fd is not None else [])
        try:
            write_all(code, request.code)
            channel.send(sock, json.dumps(spec).encode(), passed)
        finally:
            for fd in (out_w, err_w, st_w, code):
                os.close(fd)
        follower = RunFollower(
            request,
            (out_r, err_r, st_r),
            cap,
            keep=stdin_fd is None,
            latch=latch,
            stop_on_output_limit=self.stop_on_output_limit,
            supervisor_died=lambda: self._proc is not None and self._proc.poll() is not None,
        )
        follower.follow()
        events, streams = follower.events, follower.streams
        if "error" in events:
            raise TierUnavailable(
                f"the native tier could not start this run: {events['error']['message']}"
            )
        exit_event = events.get("exit")
        started = events.get("started", {})
        if exit_event is None:
            if started.get("cwd"):
                shutil.rmtree(started["cwd"], ignore_errors=True)  # its monitor would have
            raise TierUnavailable(
                "the native supervisor lost this run (its monitor process died); "
                "nothing is known about how the code ended"
            )
        for key, how in started.get("enforcement", {}).items():
            # The monitor says how a limit was kept; a note of ours on the same limit
            # (a CPU rlimit lowered to the host's hard limit) is kept beside it.
            enforcement[key] = f"{how}; {enforcement[key]}" if key in enforcement else how
        result = native_result(
            request, exit_event, streams, enforcement, follower.stopped_for_output
        )
        if started.get("prestarted"):
            result.startup_seconds = 0.0  # started before the request, as a pooled container
        if request.keep_workdir and started.get("cwd"):
            result.workdir = keep_run_dir(started["cwd"])
        if follower.interrupted:
            raise KeyboardInterrupt(result)
        return result
