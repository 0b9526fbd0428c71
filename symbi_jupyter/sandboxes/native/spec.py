"""What a native run's request becomes for the supervisor: its limits as rlimits and
the monitor's cgroup wishes (with how each is enforced), its clean environment, its
volumes as binds, and the check that the run's user can start the interpreter."""

from __future__ import annotations

import dataclasses
import math
import os
import resource
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ... import policy
from ...errors import ConfigError, TierUnavailable
from ..base import ExecutionRequest
from ..supervisor.mounts import HIDDEN as PRIVATE_DIRS
from ..supervisor.proctree import RLIMITS, soft_hard

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


def run_spec(
    request: ExecutionRequest, use_cgroups: str, worker: bool = False
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
    spec["use_cgroup"] = use_cgroups != "never"
    return spec, enforcement


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
        "PATH": policy.native_path(),
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


def volume_binds(volumes: tuple[str, ...], workdir: Path) -> list[tuple[str, bool]]:
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
        # Its real path, as validate_volume found it (no link); not resolved again,
        # so that a link planted since is refused by the bind, not followed.
        real = os.path.normpath(host)
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


def check_reachable(real: str, uid: int, gid: int, user: str) -> None:
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
