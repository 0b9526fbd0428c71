"""Tier2: the Docker path under gVisor's runsc runtime, which the daemon must list."""

from __future__ import annotations

from typing import ClassVar

from traitlets import Int

from ..tiers import SecurityTier
from .docker import DockerSandbox


class GVisorSandbox(DockerSandbox):
    """A fresh container per run, its system calls served by gVisor's user-space
    kernel. Unavailable (never run under runc instead) unless the daemon lists runsc."""

    tier = SecurityTier.TIER2
    runtime: ClassVar[str | None] = "runsc"

    sandbox_pids_limit = Int(
        8192,
        config=True,
        help="""Host pids cgroup limit of the whole gVisor sandbox, a safety net. It
        counts gVisor's own threads and stub processes, not the code's processes (those
        live in gVisor's kernel): below about 64 runsc cannot start, and with the ptrace
        platform 32 guest processes took more than 2048. The code's process limit is
        RLIMIT_NPROC, which gVisor enforces inside the sandbox.""",
    )

    def _limit_processes(self, count: int, options: dict, ulimits: list) -> str:
        from docker.types import Ulimit

        ulimits.append(Ulimit(name="nproc", soft=count, hard=count))
        options["pids_limit"] = self.sandbox_pids_limit
        return "RLIMIT_NPROC inside gVisor's kernel (the sandbox's own kernel counts them)"
