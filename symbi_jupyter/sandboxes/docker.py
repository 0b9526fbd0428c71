"""Tier1: a fresh, single-use, hardened Docker container per run, through the Docker
Engine API (the ``docker`` SDK; ``DOCKER_HOST`` and the TLS variables are honoured)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
from typing import Any, ClassVar

from traitlets import Bool, Int, List, Unicode

from .. import policy
from ..errors import ConfigError, TierUnavailable
from ..result import ExecutionResult
from ..setup.images.container import DEFAULT_IMAGE, build_command
from ..tiers import SecurityTier
from . import supervisor
from ._evidence import Evidence, killed_by, limits_reached
from ._pool import ReadyPool
from ._sigint import SigintLatch
from ._streams import CappedStream
from .base import Availability, ExecutionRequest, Sandbox, WorkerHandle
from .supervisor.cgroups import CGROUP_ROOT, DOCKER_PARENT, RunCgroup, stale_groups
from .supervisor.identity import Lease
from .supervisor.proctree import host_tag, pid_alive
from .worker import BOOTSTRAP as WORKER_BOOTSTRAP

MiB = 1024 * 1024
#: Stands for the container's leased uid in its options until it is created.
LEASED_UID = "leased-uid"
LABEL = "symbi-jupyter"
HOST_LABEL = "symbi-jupyter.host"
WORKSPACE = "/workspace"
#: Where the launcher writes the line-buffering sitecustomize (see policy.py).
LINE_BUFFERING_DIR = f"{WORKSPACE}/.symbi"
# Reads the code from stdin into a file, then runs it: the code never touches argv.
# First it writes the line-buffering sitecustomize module (see policy.py) to $3.
LAUNCHER = (
    'mkdir -p "$3" && printf "%s" "$4" > "$3/sitecustomize.py" && cat > "$1" && exec "$2" "$1"'
)
_STDOUT, _STDERR = 1, 2


class DockerSandbox(Sandbox):
    """Runs each request in a fresh container that is removed afterwards."""

    tier = SecurityTier.TIER1
    supports_volumes = True
    #: OCI runtime; None is the daemon's default (runc).
    runtime: ClassVar[str | None] = None

    image = Unicode(
        DEFAULT_IMAGE,
        config=True,
        help="""Image the cells run in. The default is built locally by
        `symbi-jupyter image build` (no registry needed); any image with /bin/sh, cat
        and the interpreter works.""",
    )
    user = Unicode(
        "",
        config=True,
        help="""UID:GID the code runs as inside the container, which is also its uid on
        the host (no user-namespace remapping); root (0) is refused. '' (the default):
        each container its own uid, leased from RunIdentities' block, so that no two
        containers, and no native run, share one.""",
    )
    read_only_root = Bool(True, config=True, help="Mount the image's filesystem read-only.")
    tmp_size_mb = Int(
        64,
        config=True,
        help="""Most of a run's disk limit its /tmp (noexec) and /dev/shm get, each (at
        most a quarter of the limit); /workspace, the code's directory, gets the rest.""",
    )
    init = Bool(True, config=True, help="Run an init (docker-init) as PID 1 to reap zombies.")
    no_new_privileges = Bool(True, config=True, help="Set no-new-privileges.")
    cap_drop = List(Unicode(), ["ALL"], config=True, help="Capabilities dropped.")
    volumes = List(
        Unicode(),
        [],
        config=True,
        help="""Extra mounts, HOST:CONTAINER[:ro|rw] (read-only by default). The Docker
        socket, containerd, /proc, /sys, /boot, /etc, /root, /var/lib/docker,
        /var/lib/kubelet and paths with '..' are refused.""",
    )
    pool_size = Int(
        1,
        config=True,
        help="""Containers kept created and started, waiting for their cell's code, per
        (image, limits, environment); each still runs exactly one cell. 0 disables the
        pool. Pooled containers are removed with the kernel (and, if it dies, end on
        their own when their attach stream closes).""",
    )
    measure_with_cgroups = Bool(
        True,
        config=True,
        help="""Put each container under a cgroup parent of our own so its peak memory
        and CPU can be read after it exits (local daemon with the cgroupfs driver).""",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client = None
        self._info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._reaped = False
        self._ready = False
        self._pool: ReadyPool[_Prepared] = ReadyPool("container", _Prepared.discard)
        self._reaper: subprocess.Popen | None = None

    # ------------------------------------------------------------------ engine
    def client(self):
        with self._lock:
            if self._client is None:
                try:
                    import docker
                except ImportError:
                    raise TierUnavailable(
                        "the docker Python package is missing: pip install docker"
                    ) from None
                try:
                    client = docker.from_env(timeout=30)
                    self._info = client.info()
                except Exception as exc:  # the SDK raises several unrelated types
                    raise TierUnavailable(
                        f"{self.tier.display_name}: no Docker engine answers "
                        f"({_short(exc)}). Start one: symbi-jupyter setup (as root), or "
                        "point DOCKER_HOST at a running engine"
                    ) from None
                self._client = client
            return self._client

    def availability(self) -> Availability:
        try:
            client = self.client()
        except TierUnavailable as exc:
            return Availability(False, str(exc))
        details = {
            "engine": self._info.get("ServerVersion", "?"),
            "runtimes": ", ".join(sorted(self._info.get("Runtimes", {}))),
        }
        if self.runtime and self.runtime not in self._info.get("Runtimes", {}):
            return Availability(
                False,
                f"{self.tier.display_name}: the Docker daemon does not list the "
                f"{self.runtime} runtime (it has {details['runtimes']}). Register it: "
                "symbi-jupyter setup (as root), or add it to daemon.json and restart dockerd",
                details,
            )
        import docker

        try:
            client.images.get(self.image)
        except docker.errors.ImageNotFound:
            return Availability(
                False,
                f"{self.tier.display_name}: the image {self.image} is missing; build it "
                f"with: {build_command()}",
                details,
            )
        details["image"] = self.image
        return Availability(True, "", details)

    def close(self) -> None:
        self._pool.close()
        with self._lock:
            self._ready = False
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._reaper is not None:
                # Our containers are removed: the reaper ends without reaping.
                with contextlib.suppress(OSError):
                    self._reaper.stdin.write(b"q")
                    self._reaper.stdin.close()
                self._reaper.wait()
                self._reaper = None

    def _start_reaper(self) -> None:
        """A process that removes this host's containers if the host is killed
        outright (a kernel's kill -9), which would otherwise run on, or wait in the
        pool, until another kernel started. Only for an engine on a local socket."""
        host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if self._reaper is not None or not host.startswith("unix://"):
            return
        self._reaper = subprocess.Popen(
            supervisor.command(
                "reaper", host.removeprefix("unix://"), f"{HOST_LABEL}={host_tag()}"
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            close_fds=True,
            # Out of the kernel's process group, so that it outlives the kernel.
            start_new_session=True,
        )

    def _measurable(self) -> bool:
        """Whether a container's figures can be read from a cgroup parent of ours: a
        local engine on cgroup v1 with the cgroupfs driver."""
        if not self.measure_with_cgroups:
            return False
        local = str(self.client().api.base_url).startswith("http+docker://local")
        return (
            local
            and self._info.get("CgroupDriver") == "cgroupfs"
            and str(self._info.get("CgroupVersion", "1")) == "1"
            and os.access(os.path.join(CGROUP_ROOT, "memory"), os.W_OK)
        )

    # ------------------------------------------------------------------ running
    def _ready_client(self):
        if not self._ready:
            availability = self.availability()
            if not availability.ok:
                raise TierUnavailable(availability.reason)
            self._ready = True  # a later loss of the image or engine fails the create
        client = self.client()
        if not self._reaped:
            self._reaped = True
            reap(client, log=self.log.warning)
            with self._lock:
                self._start_reaper()
        return client

    def run(self, request: ExecutionRequest) -> ExecutionResult:
        client = self._ready_client()
        # The same names as at tier None, here looked up inside the image.
        options, enforcement = self._container_options(
            request, request.policy.interpreter, request.policy.filename
        )
        import docker
        import requests

        try:
            # The stop button is handled in the run's loop whatever the host is doing
            # when it is pressed (SIGINT sets the latch instead of raising).
            with SigintLatch() as latch:
                return self._run_container(client, request, options, enforcement, latch)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise TierUnavailable(
                f"{self.tier.display_name}: the Docker engine failed during the run "
                f"({_short(exc)}); the container was removed"
            ) from None

    def start_worker(self, request: ExecutionRequest) -> WorkerHandle:
        import docker
        import requests

        client = self._ready_client()
        # The session keeps each cell's wall clock and CPU seconds from outside.
        request = dataclasses.replace(
            request,
            limits=dataclasses.replace(request.limits, timeout_seconds=None, max_cpu_seconds=None),
        )
        options, enforcement = self._container_options(request, "python3", "worker.py")
        for name in ("timeout", "output", "cpu"):
            enforcement.pop(name, None)
        # The worker comes in on stdin, read by a fixed bootstrap: not through argv.
        options["command"] = ["python3", "-I", "-c", WORKER_BOOTSTRAP]
        try:
            prepared = self._prepare(client, options)
            prepared.raw.sendall(f"{len(request.code)}\n".encode() + request.code)
        except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
            raise TierUnavailable(
                f"{self.tier.display_name}: could not start the worker container ({_short(exc)})"
            ) from None
        return _ContainerWorker(self, prepared, request, enforcement)

    def _container_options(
        self, request: ExecutionRequest, interpreter: str, filename: str
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The hardened container configuration for this request, and how each limit
        is enforced by it."""
        policy.check_container_env(request.env)
        # A leased uid is put in by _prepare: pooled containers of one configuration
        # stay interchangeable.
        uid, _, gid = self.user.partition(":") if self.user else (LEASED_UID, "", "")
        if not self.user:
            self.run_identities.check()
        elif not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
            raise ConfigError(
                f"{type(self).__name__}.user = {self.user!r}: give a numeric non-root UID:GID"
            )
        binds = dict(policy.validate_volume(v) for v in [*self.volumes, *request.volumes])
        lim = request.limits
        env = {
            "HOME": WORKSPACE,
            "TMPDIR": "/tmp",
            "PYTHONPATH": LINE_BUFFERING_DIR,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
            **request.env,
        }
        if request.env.get("PYTHONPATH"):
            env["PYTHONPATH"] = f"{LINE_BUFFERING_DIR}:{request.env['PYTHONPATH']}"
        from docker.types import Ulimit

        ulimits = [Ulimit(name="core", soft=0, hard=0)]
        enforcement = {
            "timeout": "host (container killed and removed)",
            "output": "host (drained past the cap)",
            "network": "none (no network interface)",
        }
        if lim.max_cpu_seconds:
            seconds = math.ceil(lim.max_cpu_seconds)
            ulimits.append(Ulimit(name="cpu", soft=seconds, hard=seconds + 1))
            enforcement["cpu"] = "ulimit (RLIMIT_CPU, per process)"
        if lim.max_file_size_mb:
            size = int(lim.max_file_size_mb * MiB)
            ulimits.append(Ulimit(name="fsize", soft=size, hard=size))
            enforcement["file_size"] = "ulimit (RLIMIT_FSIZE)"
        sizes = self._writable_sizes(lim.max_disk_mb)
        enforcement["disk"] = "tmpfs, the image read-only: " + ", ".join(
            f"{path} {kib / 1024:g} MiB" for path, kib in sizes.items()
        )
        if lim.max_open_files:
            ulimits.append(Ulimit(name="nofile", soft=lim.max_open_files, hard=lim.max_open_files))
            enforcement["open_files"] = "ulimit (RLIMIT_NOFILE)"
        options: dict[str, Any] = dict(
            command=[
                "/bin/sh",
                "-c",
                LAUNCHER,
                "symbi",
                f"{WORKSPACE}/{filename}",
                interpreter,
                LINE_BUFFERING_DIR,
                policy.line_buffering_module(),
            ],
            user=f"{uid}:{gid or uid}",
            working_dir=WORKSPACE,
            environment=env,
            labels={LABEL: "1", HOST_LABEL: host_tag(), "symbi-jupyter.tier": self.tier.value},
            network_mode="none",
            read_only=self.read_only_root,
            tmpfs={
                "/tmp": f"rw,noexec,nosuid,nodev,size={sizes['/tmp']}k",
                WORKSPACE: f"rw,nosuid,nodev,size={sizes[WORKSPACE]}k,"
                f"uid={uid},gid={gid or uid},mode=0700",
            },
            shm_size=f"{sizes['/dev/shm']}k",
            cap_drop=list(self.cap_drop),
            security_opt=["no-new-privileges"] if self.no_new_privileges else [],
            init=self.init,
            ulimits=ulimits,
            # stdin open, and closed for the code when we close our end (docker-py sets
            # StdinOnce for an attached, non-detached configuration).
            stdin_open=True,
            tty=False,
            detach=False,
        )
        if binds:
            options["volumes"] = binds
        if self.runtime:
            options["runtime"] = self.runtime
        if lim.max_memory_mb:
            memory = f"{int(lim.max_memory_mb * MiB)}b"
            options.update(mem_limit=memory, memswap_limit=memory)
            enforcement["memory"] = "container cgroup (memory = memory+swap)"
        if lim.max_processes:
            enforcement["processes"] = self._limit_processes(
                int(lim.max_processes), options, ulimits
            )
        if lim.max_cpu_cores:
            options["nano_cpus"] = int(lim.max_cpu_cores * 1e9)
            enforcement["cpu_cores"] = "container cgroup (CPU quota)"
        if lim.network:
            options["network_mode"] = "bridge"
            enforcement["network"] = "bridge network (allowed by policy)"
            runtime = self._info.get("Runtimes", {}).get(self.runtime or "", {})
            if "--network=none" in (runtime.get("runtimeArgs") or []):
                enforcement["network"] = f"none: the engine runs {self.runtime} with --network=none"
        if self._measurable() and lim.max_cpu_seconds:
            enforcement["cpu"] = "cgroup (whole container) and RLIMIT_CPU"
        return options, enforcement

    def _writable_sizes(self, disk_mb: float | None) -> dict[str, int]:
        """KiB of each writable directory (tmpfs) of a run whose disk limit is
        ``disk_mb``: together no more than the limit."""
        if not disk_mb:
            return {WORKSPACE: 256 * 1024, "/tmp": self.tmp_size_mb * 1024, "/dev/shm": 64 * 1024}
        total = max(12, int(disk_mb * 1024))
        small = max(4, min(self.tmp_size_mb * 1024, total // 4))
        return {WORKSPACE: total - 2 * small, "/tmp": small, "/dev/shm": small}

    def _limit_processes(self, count: int, options: dict, ulimits: list) -> str:
        """Under runc the container's pids cgroup counts exactly its processes."""
        options["pids_limit"] = count
        return "container cgroup (pids)"

    def _prepare(self, client, options: dict[str, Any]) -> _Prepared:
        """Create, attach to and start a container whose launcher then waits for the
        code on stdin, as a uid of its own where the options ask for one. Its cgroup
        parent (ours) outlives it, for the figures."""
        created = time.monotonic()
        options = dict(options)
        lease = None
        if options["user"].startswith(LEASED_UID):
            lease = self.run_identities.lease()
            options["user"] = options["user"].replace(LEASED_UID, str(lease.uid))
            options["tmpfs"] = {
                path: spec.replace(LEASED_UID, str(lease.uid))
                for path, spec in options["tmpfs"].items()
            }
        try:
            container, sock, parent = self._create_and_start(client, options)
        except BaseException:
            if lease:
                lease.release()  # no container of this uid was left running
            raise
        return _Prepared(container, sock._sock, parent, time.monotonic() - created, lease)

    def _create_and_start(self, client, options: dict[str, Any]) -> tuple[Any, Any, str | None]:
        import docker

        parent = None
        if self._measurable():
            parent = f"/{DOCKER_PARENT}/{host_tag()}-{next(self._counter)}"
            options["cgroup_parent"] = parent
        try:
            container = client.containers.create(self.image, **options)
        except docker.errors.ImageNotFound:
            self._ready = False
            raise TierUnavailable(
                f"the image {self.image} is missing; build it with: {build_command()}"
            ) from None
        except docker.errors.APIError as exc:
            raise TierUnavailable(f"the engine refused the container: {_short(exc)}") from None
        try:
            sock = container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
        except BaseException:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise
        return container, sock, parent

    def _run_container(
        self, client, request, options, enforcement, latch: SigintLatch
    ) -> ExecutionResult:
        import docker

        lim = request.limits
        # No spare container may sit holding a directory mounted for one request.
        key = _pool_key(self.image, options) if self.pool_size > 0 and not request.volumes else None
        prepared = self._pool.take(key) if key else None
        pooled = prepared is not None
        if prepared is None:
            prepared = self._prepare(client, options)
        if key:
            self._pool.refill(key, self.pool_size, lambda: self._prepare(client, options))
        container, raw, parent = prepared.container, prepared.raw, prepared.parent
        group = prepared.group
        cap = lim.max_output_bytes or 10 * MiB
        streams = {_STDOUT: CappedStream("stdout", cap), _STDERR: CappedStream("stderr", cap)}
        timed_out = cpu_exceeded = stopped_for_output = interrupted = False
        pids_hits = 0
        started = time.monotonic()
        try:
            raw.sendall(request.code)
            raw.shutdown(socket.SHUT_WR)
            if request.on_started and group:
                request.on_started({"usage": group.usage})
            deadline = started + lim.timeout_seconds if lim.timeout_seconds else None
            frames = _Frames()
            sel = selectors.DefaultSelector()
            sel.register(raw, selectors.EVENT_READ)
            if latch.fd is not None:
                sel.register(latch.fd, selectors.EVENT_READ)
            try:
                while True:
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        timed_out = True
                        break
                    if group and lim.max_cpu_seconds:
                        used = group.cpu_usage_seconds()
                        if used is not None and used >= lim.max_cpu_seconds:
                            cpu_exceeded = True
                            break
                    wait = 0.1 if group and lim.max_cpu_seconds else 1.0
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - now))
                    try:
                        ready = sel.select(wait)
                    except KeyboardInterrupt:
                        interrupted = True
                        break
                    if not ready:
                        continue
                    if any(key.fd == latch.fd for key, _ in ready):
                        interrupted = True
                        break
                    chunk = raw.recv(1 << 16)
                    if not chunk:
                        break
                    for kind, data in frames.feed(chunk):
                        stream = streams.get(kind)
                        if stream is None:
                            continue
                        kept = stream.feed(data)
                        if kept and request.on_output:
                            request.on_output(stream.name, kept)
            finally:
                sel.close()
            wall = time.monotonic() - started
            if timed_out or cpu_exceeded or interrupted or stopped_for_output:
                pids_hits = group.child(container.id).pids_limit_hits() if group else 0
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()
            status = container.wait(timeout=30)
            container.reload()
            state = container.attrs.get("State", {})
            result = self._result(
                request,
                streams,
                status,
                state,
                enforcement,
                parent,
                wall,
                timed_out,
                cpu_exceeded,
                pids_hits,
            )
        finally:
            raw.close()
            # The container has exited (or been killed) and its figures are read:
            # removing it and its cgroup parent need not delay the result. close()
            # waits for these removals.
            self._pool.later(prepared.discard)
        result.startup_seconds = 0.0 if pooled else prepared.startup_seconds
        if interrupted:
            raise KeyboardInterrupt(result)
        return result

    def _result(
        self,
        request,
        streams,
        status,
        state,
        enforcement,
        parent,
        wall,
        timed_out,
        cpu_exceeded,
        pids_hits,
    ) -> ExecutionResult:
        out, err = streams[_STDOUT], streams[_STDERR]
        code = int(status.get("StatusCode", -1))
        # docker-init exits 128+N when its child died of signal N.
        term_signal = code - 128 if 128 < code < 160 and not timed_out else None
        if timed_out or cpu_exceeded:
            term_signal = 9
        peak = cpu_user = cpu_sys = None
        method = None
        group = RunCgroup.v1_parent(parent) if parent else None
        if group:
            peak = group.peak_memory()
            cpu_user, cpu_sys = group.cpu_user_system()
            method = "cgroup" if peak else None
            if self.runtime == "runsc":
                enforcement["measurement"] = (
                    "the sandbox's cgroup: figures include gVisor's own kernel (the Sentry)"
                )
        else:
            enforcement["measurement"] = (
                "peak memory and CPU not measured: the engine is remote or not on cgroup v1 "
                "with the cgroupfs driver"
            )
        stderr_text = err.text()
        evidence = Evidence(
            exit_code=code,
            term_signal=term_signal,
            timed_out=timed_out,
            cpu_exceeded=cpu_exceeded,
            # The engine's flag misses a process gVisor's own kernel killed when the
            # sandbox's cgroup ran out: the cgroup's own count does not.
            oom_kills=1 if state.get("OOMKilled") else group.oom_kills() if group else 0,
            memory_limit_reached=bool(
                peak
                and request.limits.max_memory_mb
                and peak >= int(request.limits.max_memory_mb * MiB)
            ),
            pids_limit_hits=pids_hits,
            cpu_seconds=(cpu_user or 0) + (cpu_sys or 0),
            stderr=stderr_text,
            output_truncated=out.truncated or err.truncated,
        )
        stopped_by = killed_by(evidence, request.limits)
        return ExecutionResult(
            tier=self.tier,
            stdout=out.text(),
            stderr=stderr_text,
            exit_code=-1 if term_signal else code,
            execution_time_ms=round(wall * 1000),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            timed_out=timed_out,
            killed_by=stopped_by,
            term_signal=term_signal,
            peak_memory_bytes=peak,
            memory_method=method,
            cpu_user_seconds=cpu_user,
            cpu_system_seconds=cpu_sys,
            wall_seconds=wall,
            limits=request.limits,
            enforcement=enforcement,
            limits_reached=limits_reached(evidence, stopped_by),
            language=request.language,
            executable=f"{self.image}:{request.policy.interpreter}",
            code_sha256=request.code_sha256,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
        )


@dataclasses.dataclass
class _Prepared:
    """A started container whose launcher waits for its code on stdin."""

    container: Any
    raw: socket.socket
    parent: str | None
    startup_seconds: float
    #: the container's own host uid, held until it is removed
    lease: Lease | None = None

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        if self.group:
            self.group.remove()
        if self.lease:
            self.lease.release()

    @functools.cached_property
    def group(self) -> RunCgroup | None:
        """The container's cgroup parent, where its figures are read."""
        return RunCgroup.v1_parent(self.parent) if self.parent else None


class _ContainerWorker(WorkerHandle):
    """A kernel's worker in a long-lived container: its attach stream is the channel."""

    def __init__(
        self,
        sandbox: DockerSandbox,
        prepared: _Prepared,
        request: ExecutionRequest,
        enforcement: dict[str, str],
    ) -> None:
        self._sandbox = sandbox
        self._prepared = prepared
        self._request = request
        self._enforcement = enforcement
        self._send_lock = threading.Lock()
        self._started = time.monotonic()
        self._killed = False
        self.result: ExecutionResult | None = None
        self._reader = threading.Thread(
            target=self._read, name="symbi-container-worker", daemon=True
        )
        self._reader.start()

    @property
    def enforcement(self) -> dict[str, str]:
        return dict(self._enforcement)

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._prepared.raw.sendall(data)

    def _read(self) -> None:
        raw, frames = self._prepared.raw, _Frames()
        names = {_STDOUT: "stdout", _STDERR: "stderr"}
        try:
            while chunk := raw.recv(1 << 16):
                for kind, data in frames.feed(chunk):
                    if kind in names and self._request.on_output:
                        self._request.on_output(names[kind], data)
        except OSError:
            pass
        self._finish()

    def _finish(self) -> None:
        """The container ended (or was killed): read its figures, then remove it."""
        container, parent = self._prepared.container, self._prepared.parent
        status: dict[str, Any] = {"StatusCode": -1}
        state: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            status = container.wait(timeout=30)
            container.reload()
            state = container.attrs.get("State", {})
        streams = {
            k: CappedStream(n, math.inf, keep=False)
            for k, n in ((_STDOUT, "stdout"), (_STDERR, "stderr"))
        }
        self.result = self._sandbox._result(
            self._request,
            streams,
            status,
            state,
            dict(self._enforcement),
            parent,
            time.monotonic() - self._started,
            False,
            False,
            0,
        )
        self._sandbox._pool.later(self._prepared.discard)

    def stop(self) -> None:
        if self.result is None and not self._killed:
            self._killed = True
            with contextlib.suppress(Exception):
                self._prepared.container.kill()
        self._reader.join(timeout=60)

    def wait(self, timeout: float | None = None) -> ExecutionResult | None:
        self._reader.join(timeout)
        return self.result

    def usage(self) -> dict[str, Any]:
        group = self._prepared.group
        if not group or self.result is not None:
            return {}
        return group.usage()

    def reset_peak(self) -> bool:
        group = self._prepared.group
        return bool(group) and group.reset_peak()


def _pool_key(image: str, options: dict[str, Any]) -> str:
    return json.dumps([image, options], sort_keys=True, default=str)


class _Frames:
    """Splits Docker's multiplexed attach stream (8-byte headers) into frames."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        self.buf += chunk
        out = []
        while len(self.buf) >= 8:
            kind, size = self.buf[0], struct.unpack(">I", self.buf[4:8])[0]
            if len(self.buf) < 8 + size:
                break
            out.append((kind, self.buf[8 : 8 + size]))
            self.buf = self.buf[8 + size :]
        return out


def reap(client, *, log=print) -> list[str]:
    """Remove our containers, and their cgroup parents, whose kernel (of this pid
    namespace) is gone. Returns the short ids of the containers removed."""
    namespace = host_tag().split("-")[0]
    removed = []
    # ignore_removed: a container being removed right now (ours, after its run) is
    # listed, then gone when the SDK looks it up.
    for container in client.containers.list(
        all=True, filters={"label": LABEL}, ignore_removed=True
    ):
        owner = container.labels.get(HOST_LABEL, "")
        ns, _, pid = owner.partition("-")
        if ns != namespace or not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.short_id)
    for path in stale_groups(DOCKER_PARENT):
        with contextlib.suppress(OSError):
            os.rmdir(path)
    if removed:
        log(f"reaped containers left by dead kernels: {', '.join(removed)}")
    return removed


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
