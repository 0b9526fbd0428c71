"""Tier1: a fresh, single-use, hardened Docker container per run, through the Docker
Engine API (the ``docker`` SDK; ``DOCKER_HOST`` and the TLS variables are honoured).

Split by what each module holds, so that none grows past the project's size limit:
``sandbox`` (:class:`DockerSandbox`: its traits, the engine, a run from start to end),
``options`` (what a request becomes as docker-py options, the labels and the
launcher), ``prepared`` (a started container waiting for its code, and its pool key),
``attach`` (the attach stream's frames and a run's read loop), ``results`` (an ended
container as an ExecutionResult), ``worker_handle`` (a kernel's worker in a container)
and ``reaping`` (containers left by dead kernels). gVisor's Tier2 subclass lives in
``sandboxes/gvisor.py``. Import from ``symbi_jupyter.sandboxes.docker`` itself: the
entry point ``tier1`` names it, and the modules are its layout, not its interface.
"""

from __future__ import annotations

# host_tag is the value of HOST_LABEL: importable from here, as before the split.
from ..supervisor.proctree import host_tag
from .options import (
    HOST_LABEL,
    LABEL,
    LAUNCHER,
    LEASED_UID,
    LINE_BUFFERING_DIR,
    WORKSPACE,
    MiB,
)
from .reaping import reap
from .sandbox import DockerSandbox

__all__ = [
    "HOST_LABEL",
    "LABEL",
    "LAUNCHER",
    "LEASED_UID",
    "LINE_BUFFERING_DIR",
    "WORKSPACE",
    "DockerSandbox",
    "MiB",
    "host_tag",
    "reap",
]
