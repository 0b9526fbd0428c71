"""The guest's side of the contract: where its build lives, the smallest guest that
boots, the name of its agent's port, and the clock figure a guest under TCG needs."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: The smallest guest that boots python3 here.
MIN_GUEST_MIB = 128
PORT_NAME = "symbi.agent"


def default_artifacts_dir(profile: str = "minimal") -> Path:
    """Where ``image build --tier3`` puts the guest unless told otherwise:
    ``/var/lib/symbi-jupyter/microvm`` for root, else under ``$XDG_DATA_HOME``; another
    profile's guest (``--profile scientific``) beside it, as ``microvm-scientific``."""
    name = "microvm" if profile == "minimal" else f"microvm-{profile}"
    if os.geteuid() == 0:
        return Path("/var/lib/symbi-jupyter") / name
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "symbi-jupyter" / name


def host_tsc_khz() -> int:
    """The host's TSC frequency in kHz, for the guest's early calibration under TCG."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    return 2_000_000
