"""Tier1: a fresh, single-use, hardened Docker container per run, through the Docker
Engine API (the ``docker`` SDK; ``DOCKER_HOST`` and the TLS variables are honoured).
DockerSandbox's traits, its engine, and a run or a kernel's worker from start to end;
gVisor's Tier2 subclasses it (``sandboxes/gvisor.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket
import subprocess
import threading
import time
from typing import Any, ClassVar

from traitlets import Bool, Int, List, Unicode

from ...errors import TierUnavailable
from ...limits import within_cores
from ...result import ExecutionResult
from ...setup.images.container import DEFAULT_IMAGE, build_command
from ...tiers import SecurityTier
from .. import supervisor
from .._pool import ReadyPool
from .._sigint import SigintLatch
from .._streams import CappedStream
from ..base import Availability, ExecutionRequest, Sandbox, WorkerHandle
from ..supervisor.cgroups import CGROUP_ROOT, DOCKER_PARENT
from ..supervisor.proctree import host_tag
from ..worker import BOOTSTRAP as WORKER_BOOTSTRAP
from .attach import STDERR, STDOUT, follow_run
from .options import HOST_LABEL, LEASED_UID, MiB, container_options
from .prepared import Prepared, pool_key
from .reaping import reap
from .results import container_result
from .worker_handle import ContainerWorker


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
        and the interpreter works. For numpy, pandas and matplotlib (figures inline),
        build symbi-jupyter/sandbox:bookworm-scientific with `symbi-jupyter image build
        --profile scientific` and name it here (it is about 3 times larger).""",
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
        self._client: Any = None  # a docker.DockerClient (the SDK has no types)
        self._info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._reaped = False
        self._ready = False
        self._pool: ReadyPool[Prepared] = ReadyPool("container", Prepared.discard)
        self._reaper: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ engine
    def client(self) -> Any:
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
            image = client.images.get(self.image)
        except docker.errors.ImageNotFound:
            return Availability(
                False,
                f"{self.tier.display_name}: the image {self.image} is missing; build it "
                f"with: {build_command(self.image)}",
                details,
            )
        # The profile it was built with (image build --profile), where its label says.
        profile = (image.labels or {}).get("org.symbi-jupyter.profile")
        details["image"] = self.image + (f" (profile {profile})" if profile else "")
        return Availability(True, "", details)

    def close(self) -> None:
        self._pool.close()
        with self._lock:
            self._ready = False
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._reaper is not None:
                assert self._reaper.stdin is not None  # started with stdin=PIPE
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
        # The reaper forks and this child exits at once: waited for, it leaves no
        # zombie under the kernel.
        threading.Thread(target=self._reaper.wait, name="symbi-reaper-wait", daemon=True).start()

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
    def _ready_client(self) -> Any:
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
        request, options, enforcement = self._options(
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
        request, options, enforcement = self._options(request, "python3", "worker.py")
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
        return ContainerWorker(self, prepared, request, enforcement)

    def _options(
        self, request: ExecutionRequest, interpreter: str, filename: str
    ) -> tuple[ExecutionRequest, dict[str, Any], dict[str, str]]:
        """The request with its CPU cores within what the engine's host has (the engine
        refuses more), its container options, and how each limit is enforced."""
        limits, note = within_cores(request.limits, self._info.get("NCPU"), "the engine's host")
        request = dataclasses.replace(request, limits=limits)
        options, enforcement = container_options(self, request, interpreter, filename)
        if note:
            enforcement["cpu_cores"] += f", {note}"
        return request, options, enforcement

    def _limit_processes(self, count: int, options: dict, ulimits: list) -> str:
        """Under runc the container's pids cgroup counts exactly its processes."""
        options["pids_limit"] = count
        return "container cgroup (pids)"

    def _prepare(self, client: Any, options: dict[str, Any]) -> Prepared:
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
        writable = tuple(
            host for host, bind in options.get("volumes", {}).items() if bind["mode"] != "ro"
        )
        return Prepared(container, sock._sock, parent, time.monotonic() - created, lease, writable)

    def _create_and_start(
        self, client: Any, options: dict[str, Any]
    ) -> tuple[Any, Any, str | None]:
        import docker

        parent = None
        if self._measurable():
            # Unique across tiers, orchestrators and processes: a shared name once
            # gave one tier's run another tier's figures.
            parent = (
                f"/{DOCKER_PARENT}/{host_tag()}-{self.tier.value.lower()}-{secrets.token_hex(8)}"
            )
            options["cgroup_parent"] = parent
        try:
            container = client.containers.create(self.image, **options)
        except docker.errors.ImageNotFound:
            self._ready = False
            raise TierUnavailable(
                f"the image {self.image} is missing; build it with: {build_command(self.image)}"
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
        self,
        client: Any,
        request: ExecutionRequest,
        options: dict[str, Any],
        enforcement: dict[str, str],
        latch: SigintLatch,
    ) -> ExecutionResult:
        import docker

        lim = request.limits
        # No spare container may sit holding a directory mounted for one request.
        key = pool_key(self.image, options) if self.pool_size > 0 and not request.volumes else None
        prepared = self._pool.take(key) if key else None
        pooled = prepared is not None
        if prepared is None:
            prepared = self._prepare(client, options)
        if key:
            self._pool.refill(key, self.pool_size, lambda: self._prepare(client, options))
        container, raw, parent = prepared.container, prepared.raw, prepared.parent
        group = prepared.group
        cap = lim.max_output_bytes or 10 * MiB
        streams = {STDOUT: CappedStream("stdout", cap), STDERR: CappedStream("stderr", cap)}
        timed_out = cpu_exceeded = stopped_for_output = interrupted = False
        pids_hits = 0
        started = time.monotonic()
        try:
            raw.sendall(request.code)
            raw.shutdown(socket.SHUT_WR)
            if request.on_started and group:
                request.on_started({"usage": group.usage})
            deadline = started + lim.timeout_seconds if lim.timeout_seconds else None
            timed_out, cpu_exceeded, interrupted = follow_run(
                raw, streams, request, group, deadline, latch
            )
            wall = time.monotonic() - started
            if timed_out or cpu_exceeded or interrupted or stopped_for_output:
                pids_hits = group.child(container.id).pids_limit_hits() if group else 0
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()
            status = container.wait(timeout=30)
            container.reload()
            state = container.attrs.get("State", {})
            result = container_result(
                self,
                request,
                streams,
                status,
                state,
                enforcement,
                parent,
                container.id,
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
