"""What the parts of the microVM guest build share: the artefacts' names, the guest's
paths, this package's inputs to the guest, the build's error and its way of running tools."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from ...sandboxes.microvm import PORT_NAME

#: symbi_jupyter/data/microvm, two packages up from this file.
DATA = Path(__file__).parents[2] / "data" / "microvm"
INIT_SCRIPT = DATA / "init"
KERNEL_FRAGMENT = DATA / "guest-kernel.config.fragment"

KERNEL, INITRD, ROOTFS, MANIFEST = "vmlinux", "initramfs.cpio.gz", "rootfs.img", "manifest.json"
GUEST_DIR = "/usr/lib/symbi"
GUEST_INIT = f"{GUEST_DIR}/init"
GUEST_BOOTSTRAP = f"{GUEST_DIR}/bootstrap.py"
#: The virtio-serial port name the guest init looks for (the sandbox names its port so).
AGENT_PORT = PORT_NAME
#: The console line the init prints just before it starts the worker.
READY_LINE = "symbi-guest: ready"

# reboot=t: on `reboot`, triple-fault at once (QEMU -no-reboot then exits) instead of
# trying ACPI and the keyboard controller first, which costs about 3 s under TCG.
COMMON_ARGS = "console=ttyS0 reboot=t quiet"


class MicroVMImageError(Exception):
    """The artefacts could not be built; the message says why and what to do."""


def run_tool(
    argv: list[str], what: str, *, text: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run ``argv``; on failure raise :class:`MicroVMImageError` with ``what`` and the
    tail of its stderr."""
    proc = subprocess.run(argv, capture_output=True, text=text, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise MicroVMImageError(f"{what} failed ({proc.returncode}): {tail}")
    return proc
