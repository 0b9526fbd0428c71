"""Tier None: native execution on the host, under real limits.

Each run gets a private directory, a clean environment, rlimits, and (where the host
allows it) its own cgroups; a small supervisor process (:mod:`.supervisor`) forks the
code, enforces the wall clock and kills the whole process tree afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pwd
import py_compile
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Float, Int, Unicode

from .. import policy
from ..errors import ConfigError, TierUnavailable
from ..result import ExecutionResult
from ..tiers import SecurityTier
from . import supervisor
from ._evidence import Evidence, assemble
from ._follow import RunFollower
from ._sigint import SigintLatch
from ._streams import CappedStream
from ._usage import run_usage
from .base import Availability, ExecutionRequest, Sandbox, WorkerHandle
from .supervisor import channel
from .supervisor.cgroups import RunCgroup
from .supervisor.mounts import HIDDEN as PRIVATE_DIRS
from .supervisor.proctree import RLIMITS, host_tag, pid_alive, soft_hard, write_all
from .supervisor.workload import RUN_DIR, profile_of

MiB = 1024 * 1024


def _within_hard_limit(name: str, value: int | list[int]) -> tuple[int | list[int], int | None]:
    """``value`` (a limit, or [soft, hard]) lowered to this process's hard limit where
    an unprivileged process could not raise it (stricter, never weaker, than asked;
    the run would otherwise fail to start); and that hard limit if it was lowered."""
    soft, hard = soft_hard(value)
    host = resource.getrlimit(RLIMITS[name])[1]
    if os.geteuid() == 0 or host == resource.RLIM_INFINITY or hard <= host:
        return value, None
    return ([min(soft, host), host] if isinstance(value, list) else host), host


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
        worker = _NativeWorker(in_w)
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
        who = self._run_as(workdir)
        if who:
            # Any leased uid is "other" to the interpreter's files, as the block's first.
            uid = who.get("uid", who.get("identity", {}).get("first"))
            _check_reachable(real_exe, uid, who.get("gid", uid), self.run_as_user or "a leased uid")
        spec, enforcement = self._spec(request, worker=stdin_fd is not None)
        # The monitor makes the run directory: it stands in the environment as RUN_DIR.
        env = native_environment(request.env, pol.env_passthrough, RUN_DIR)
        usual = filename.endswith(".py") and not request.executable and not request.env
        if stdin_fd is not None or not usual:
            prestart = "skip"  # runs unlike the usual one do not change what spares start
        else:
            prestart = "use" if self.prestart_interpreter else "off"
        spec.update(
            executable=real_exe,
            argv0=pol.argv0,
            filename=filename,
            workdir=str(workdir),
            binds=_binds(request.volumes, workdir),
            env=env,
            uid=who.get("uid"),
            gid=who.get("gid"),
            identity=who.get("identity"),
            prestart=prestart,
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
            who = {"uid": entry.pw_uid, "gid": entry.pw_gid}
        else:
            who = {"identity": self.run_identities.check()}
        # The unprivileged user must be able to reach its run directory.
        mode = workdir.stat().st_mode
        if mode & 0o111 != 0o111:
            os.chmod(workdir, (mode & 0o7777) | 0o111)
        return who

    def _spec(
        self, request: ExecutionRequest, worker: bool = False
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Translate limits into the supervisor's request. The monitor decides, and
        reports, how the limits that prefer a cgroup were enforced: it alone knows
        whether the run's cgroups could be set up. A worker's wall clock and CPU
        seconds are per cell, kept by its session, not by the monitor."""
        lim = request.limits
        if worker:
            lim = dataclasses.replace(lim, timeout_seconds=None, max_cpu_seconds=None)
        enforcement: dict[str, str] = {
            "timeout": "supervisor (wall clock, whole tree killed)",
            "output": "host (drained past the cap)",
        }
        if worker:
            enforcement = {}
        spec: dict[str, Any] = {"timeout": lim.timeout_seconds, "rlimits": {"core": 0}}
        if lim.network is False:
            spec["new_netns"] = True
        if not request.policy.enforce_resource_limits:
            for name in ("memory", "cpu", "processes", "file_size", "open_files", "cpu_cores"):
                enforcement[name] = "not enforced: enforce_resource_limits is off"
            spec["use_cgroup"] = False
            return spec, enforcement
        rl = spec["rlimits"]
        if lim.max_memory_mb:
            spec["memory_bytes"] = int(lim.max_memory_mb * MiB)
        if lim.max_cpu_seconds:
            seconds = math.ceil(lim.max_cpu_seconds)
            rl["cpu"] = [seconds, seconds + 1]  # SIGXCPU first, SIGKILL a second later
            spec["cpu_seconds_total"] = lim.max_cpu_seconds
        if lim.max_file_size_mb:
            rl["fsize"] = int(lim.max_file_size_mb * MiB)
            enforcement["file_size"] = "rlimit (RLIMIT_FSIZE)"
        if lim.max_open_files:
            rl["nofile"] = int(lim.max_open_files)
            enforcement["open_files"] = "rlimit (RLIMIT_NOFILE)"
        for name, key in (("cpu", "cpu"), ("fsize", "file_size"), ("nofile", "open_files")):
            if name in rl:
                rl[name], lowered = _within_hard_limit(name, rl[name])
                if lowered is not None:
                    enforcement[key] = (
                        f"rlimit (RLIMIT_{name.upper()}), lowered to {lowered}: this host's "
                        "hard limit, which an unprivileged user cannot raise"
                    )
        if lim.max_disk_mb:
            spec["disk_bytes"] = int(lim.max_disk_mb * MiB)
        if lim.max_processes:
            spec["pids"] = int(lim.max_processes)
        if lim.max_cpu_cores:
            spec["cpu_cores"] = lim.max_cpu_cores
        spec["use_cgroup"] = self.use_cgroups != "never"
        return spec, enforcement

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
        result = self._result(
            request, exit_event, streams, enforcement, follower.stopped_for_output
        )
        if started.get("prestarted"):
            result.startup_seconds = 0.0  # started before the request, as a pooled container
        if request.keep_workdir and started.get("cwd"):
            run_dir = Path(started["cwd"])
            kept = run_dir.with_name("kept-" + run_dir.name[len("run-") :])
            run_dir.rename(kept)
            if os.geteuid() == 0:
                _give_to_root(kept)
            result.workdir = str(kept)
        if follower.interrupted:
            raise KeyboardInterrupt(result)
        return result

    def _result(
        self,
        request: ExecutionRequest,
        ev: dict[str, Any],
        streams: dict[int, CappedStream],
        enforcement: dict[str, str],
        stopped_for_output: bool,
    ) -> ExecutionResult:
        out, err = (s for s in streams.values())
        code = ev.get("exit_code")
        term_signal = -code if code is not None and code < 0 else None
        stderr_text = err.text()
        evidence = Evidence(
            exit_code=code,
            term_signal=term_signal,
            timed_out=bool(ev.get("timed_out")),
            cpu_exceeded=bool(ev.get("cpu_exceeded")),
            stopped_for_output=stopped_for_output,
            oom_kills=ev.get("oom_kills") or 0,
            pids_limit_hits=ev.get("pids_limit_hits") or 0,
            disk_full=ev.get("disk_full"),
            cpu_seconds=(ev.get("cpu_user_seconds") or 0) + (ev.get("cpu_system_seconds") or 0),
            stderr=stderr_text,
            output_truncated=out.truncated or err.truncated,
        )
        peak = ev.get("peak_memory_bytes")
        method = "cgroup" if peak else None
        if not peak:
            peak, method = ev.get("maxrss_bytes") or None, "wait4"
        return assemble(
            SecurityTier.NONE,
            request,
            evidence,
            out,
            err,
            exit_code=code if code is not None and code >= 0 else -1,
            wall_seconds=float(ev.get("wall_seconds") or 0.0),
            enforcement=enforcement,
            peak_memory_bytes=peak,
            memory_method=method if peak else None,
            cpu_user_seconds=ev.get("cpu_user_seconds"),
            cpu_system_seconds=ev.get("cpu_system_seconds"),
        )


def _binds(volumes: tuple[str, ...], workdir: Path) -> list[tuple[str, bool]]:
    """Host directories a run reaches as themselves, past its private /tmp: each
    volume HOST:HOST[:ro|rw] as (path, read-only). Tier None sees host paths where they
    are, so a volume cannot move one, nor cover what the run has of its own: the
    working directory (and in it the run's directory), /tmp, /var/tmp, /dev/shm."""
    if not volumes:
        return []  # the usual run: no path to resolve
    # A bind is not recursive: over /var it would show the host's /var/tmp again.
    own = {
        os.path.realpath(workdir): f"the working directory {workdir}, where the run's own "
        "directory is",
        **{path: f"the run's private {path}" for path in PRIVATE_DIRS},
    }
    binds = []
    for spec in volumes:
        host, bind = policy.validate_volume(spec)
        real = os.path.realpath(host)
        if not os.path.isdir(real):
            raise ConfigError(f"volume {spec!r}: {host} is not a directory")
        if os.path.realpath(bind["bind"]) != real:
            raise ConfigError(
                f"volume {spec!r}: tier None sees host directories at their own path; "
                f"write it as {real}:{real}:{bind['mode']}"
            )
        for path, what in own.items():
            if path == real or path.startswith(real + "/"):
                raise ConfigError(
                    f"volume {spec!r} would cover {what}; give a directory beside or below it"
                )
        binds.append((real, bind["mode"] == "ro"))
    return binds


def _give_to_root(path: Path) -> None:
    """A kept run directory and all in it to root: the run's uid is free for another
    run, which must find nothing of this one's. Never follows a link the run made."""
    for _, dirs, files, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in dirs + files:
            os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
    os.chown(path, 0, 0, follow_symlinks=False)


def _check_reachable(real: str, uid: int, gid: int, user: str) -> None:
    """Refuse early, with the fix, when the unprivileged user cannot run the
    interpreter (a Python installed under /root, say)."""
    path = Path(real)
    for node in [*reversed(path.parents), path]:
        st = node.stat()
        if st.st_uid == uid:
            bits = st.st_mode >> 6
        elif st.st_gid == gid:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        if not bits & 0o1:  # search a directory, execute the file
            raise TierUnavailable(
                f"the interpreter {real} cannot be run by the unprivileged user {user!r} "
                f"that native code runs as under root: {node} (mode "
                f"{st.st_mode & 0o7777:o}) is closed to it. Use a Python other users can "
                "run (e.g. a virtualenv made from Debian's /usr/bin/python3), or set "
                "NativeSandbox.run_as_user = '' to run as root (weaker)"
            )


def native_environment(
    explicit: Mapping[str, str],
    passthrough: Iterable[str],
    run_dir: str,
    host: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The clean environment of a native run: nothing from the host but a PATH, the
    locale and the names the operator lets through; then the caller's own values
    (checked by the orchestrator)."""
    host = os.environ if host is None else host
    env = {
        "PATH": os.pathsep.join(
            dict.fromkeys([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
        ),
        "HOME": run_dir,
        "TMPDIR": os.path.join(run_dir, "tmp"),
        "PYTHONPATH": str(policy.LINE_BUFFERING_DIR),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for key, value in host.items():
        if key in ("LANG", "LANGUAGE", "TZ") or key.startswith("LC_"):
            env[key] = value
    for key in passthrough:
        if key in host:
            env[key] = host[key]
    explicit = dict(explicit)
    if explicit.get("PYTHONPATH"):
        explicit["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + explicit["PYTHONPATH"]
    env.update(explicit)
    return env


class _NativeWorker(WorkerHandle):
    """A kernel's worker on the host: a run of the supervisor with a stdin pipe."""

    def __init__(self, stdin_w: int) -> None:
        self._stdin = stdin_w
        self._send_lock = threading.Lock()
        self.ready = threading.Event()  # started, or failed before it could
        self.done = threading.Event()  # the run is over: result or error is set
        self.monitor_pid: int | None = None
        self.pid: int | None = None
        self.cgroup: dict[str, Any] | None = None
        self._enforcement: dict[str, str] = {}
        self.result: ExecutionResult | None = None
        self.error: BaseException | None = None

    def started(self, event: dict[str, Any]) -> None:
        self.monitor_pid, self.pid = event["monitor_pid"], event["pid"]
        self.cgroup = event.get("cgroup")
        self._enforcement = event.get("enforcement", {})
        self.ready.set()

    @property
    def enforcement(self) -> dict[str, str]:
        return dict(self._enforcement)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            write_all(self._stdin, data)

    def stop(self) -> None:
        if self.monitor_pid is not None and self.result is None and self.error is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.monitor_pid, signal.SIGUSR1)
        self.wait(timeout=10)
        with contextlib.suppress(OSError):
            os.close(self._stdin)
        self._stdin = -1

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        if not self.done.wait(timeout):
            return None
        if self.error is not None:
            if isinstance(self.error, TierUnavailable):
                raise self.error
            raise TierUnavailable(f"the native worker failed: {self.error!r}")
        return self.result

    def usage(self) -> dict[str, Any]:
        return run_usage({"cgroup": self.cgroup, "pid": self.pid})

    def reset_peak(self) -> bool:
        # v2's memory.peak resets per open file only: False there.
        return bool(self.cgroup) and RunCgroup.from_report(self.cgroup).reset_peak()
