"""What a request becomes as docker-py options: the hardened container (no network, no
capabilities, the image read-only, tmpfs sized to the disk limit, rlimits) and, for
each limit, how that configuration enforces it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ... import policy
from ...errors import ConfigError
from ...limits import ResourceLimits
from ..base import ExecutionRequest
from ..supervisor import workdir_view
from ..supervisor.proctree import host_tag
from ..supervisor.workload import code_arguments

if TYPE_CHECKING:
    from .sandbox import DockerSandbox

MiB = 1024 * 1024
#: Stands for the container's leased uid in its options until it is created.
LEASED_UID = "leased-uid"
LABEL = "symbi-jupyter"
HOST_LABEL = "symbi-jupyter.host"
WORKSPACE = "/workspace"
#: Where the launcher writes the line-buffering sitecustomize (see policy.py).
LINE_BUFFERING_DIR = f"{WORKSPACE}/.symbi"
# Reads the code from stdin into a file, then runs it: the code never touches argv.
# First it writes the line-buffering sitecustomize module (see policy.py) to $3; the
# interpreter ($2) gets the arguments after the fourth (code_arguments).
LAUNCHER = (
    'mkdir -p "$3" && printf "%s" "$4" > "$3/sitecustomize.py" && cat > "$1" && '
    'interpreter=$2 && shift 4 && exec "$interpreter" "$@"'
)


def container_options(
    sandbox: DockerSandbox, request: ExecutionRequest, interpreter: str, filename: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The hardened container configuration for this request, and how each limit
    is enforced by it."""
    policy.check_container_env(request.env)
    uid, gid = _run_as(sandbox)
    binds = dict(policy.validate_volume(v) for v in [*sandbox.volumes, *request.volumes])
    lim = request.limits
    env = _environment(request.env)
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
    sizes = writable_sizes(lim.max_disk_mb, sandbox.tmp_size_mb)
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
            *code_arguments(f"{WORKSPACE}/{filename}"),
        ],
        user=f"{uid}:{gid or uid}",
        working_dir=WORKSPACE,
        environment=env,
        labels={LABEL: "1", HOST_LABEL: host_tag(), "symbi-jupyter.tier": sandbox.tier.value},
        network_mode="none",
        read_only=sandbox.read_only_root,
        tmpfs={
            "/tmp": f"rw,noexec,nosuid,nodev,size={sizes['/tmp']}k",
            WORKSPACE: f"rw,nosuid,nodev,size={sizes[WORKSPACE]}k,"
            f"uid={uid},gid={gid or uid},mode=0700",
        },
        shm_size=f"{sizes['/dev/shm']}k",
        cap_drop=list(sandbox.cap_drop),
        security_opt=["no-new-privileges"] if sandbox.no_new_privileges else [],
        init=sandbox.init,
        ulimits=ulimits,
        # stdin open, and closed for the code when we close our end (docker-py sets
        # StdinOnce for an attached, non-detached configuration).
        stdin_open=True,
        tty=False,
        detach=False,
    )
    if binds:
        options["volumes"] = binds
    _show_workdir(request, options, enforcement)
    if sandbox.runtime:
        options["runtime"] = sandbox.runtime
    _container_limits(sandbox, lim, options, ulimits, enforcement)
    return options, enforcement


def _show_workdir(
    request: ExecutionRequest, options: dict[str, Any], enforcement: dict[str, str]
) -> None:
    """Bind the working directory's files (:mod:`..supervisor.workdir_view`) read-only
    into /workspace, one mount each: the run directories beside them stay out of
    sight, and the run's own files in /workspace stay its own. The list is part of
    the options, so a pooled container made for another one is not taken."""
    workdir = request.policy.working_directory
    if workdir is None:
        return
    names = workdir_view.entries(str(workdir))
    if names:
        from docker.types import Mount

        options["mounts"] = [
            Mount(f"{WORKSPACE}/{name}", str(workdir / name), type="bind", read_only=True)
            for name in names
        ]
    enforcement.update(workdir_view.note(names, f"mounted read-only in {WORKSPACE}"))


def _run_as(sandbox: DockerSandbox) -> tuple[str, str]:
    """The UID and GID ('' for the UID's own) the code runs as: ``sandbox.user``, or
    LEASED_UID, which DockerSandbox._prepare replaces by a uid leased for the container
    alone; put in only then, so that pooled containers of one configuration stay
    interchangeable."""
    uid, _, gid = sandbox.user.partition(":") if sandbox.user else (LEASED_UID, "", "")
    if not sandbox.user:
        sandbox.run_identities.check()
    elif not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        raise ConfigError(
            f"{type(sandbox).__name__}.user = {sandbox.user!r}: give a numeric non-root UID:GID"
        )
    return uid, gid


def _environment(requested: dict[str, str]) -> dict[str, str]:
    """The container's environment: ours, then the request's, with the line-buffering
    directory kept first on a requested PYTHONPATH."""
    env = {
        "HOME": WORKSPACE,
        "TMPDIR": "/tmp",
        "PYTHONPATH": LINE_BUFFERING_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
        **requested,
    }
    if requested.get("PYTHONPATH"):
        env["PYTHONPATH"] = f"{LINE_BUFFERING_DIR}:{requested['PYTHONPATH']}"
    return env


def _container_limits(
    sandbox: DockerSandbox,
    lim: ResourceLimits,
    options: dict[str, Any],
    ulimits: list,
    enforcement: dict[str, str],
) -> None:
    """Adds to ``options`` what the container itself enforces (memory, processes and
    CPU cores; processes the sandbox's own way) and the network the policy allows,
    each noted in ``enforcement``."""
    if lim.max_memory_mb:
        memory = f"{int(lim.max_memory_mb * MiB)}b"
        options.update(mem_limit=memory, memswap_limit=memory)
        enforcement["memory"] = "container cgroup (memory = memory+swap)"
    if lim.max_processes:
        # The sandbox's own: gVisor's subclass limits processes inside its kernel.
        enforcement["processes"] = sandbox._limit_processes(
            int(lim.max_processes), options, ulimits
        )
    if lim.max_cpu_cores:
        options["nano_cpus"] = int(lim.max_cpu_cores * 1e9)
        enforcement["cpu_cores"] = "container cgroup (CPU quota)"
    if lim.network:
        options["network_mode"] = "bridge"
        enforcement["network"] = "bridge network (allowed by policy)"
        runtime = sandbox._info.get("Runtimes", {}).get(sandbox.runtime or "", {})
        if "--network=none" in (runtime.get("runtimeArgs") or []):
            enforcement["network"] = f"none: the engine runs {sandbox.runtime} with --network=none"
    if sandbox._measurable() and lim.max_cpu_seconds:
        enforcement["cpu"] = "cgroup (whole container) and RLIMIT_CPU"


def writable_sizes(disk_mb: float | None, tmp_size_mb: int) -> dict[str, int]:
    """KiB of each writable directory (tmpfs) of a run whose disk limit is
    ``disk_mb``: together no more than the limit. ``tmp_size_mb`` is
    DockerSandbox.tmp_size_mb."""
    if not disk_mb:
        return {WORKSPACE: 256 * 1024, "/tmp": tmp_size_mb * 1024, "/dev/shm": 64 * 1024}
    total = max(12, int(disk_mb * 1024))
    small = max(4, min(tmp_size_mb * 1024, total // 4))
    return {WORKSPACE: total - 2 * small, "/tmp": small, "/dev/shm": small}
