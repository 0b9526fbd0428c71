"""The interface every VMM driver implements: :class:`VMSpec`, one VM to boot, and
:class:`VMMDriver`, which finds its monitor and gives the command line that boots it.
One driver per module beside this one: ``qemu`` and ``firecracker``."""

from __future__ import annotations

import abc
import dataclasses
import shutil
from pathlib import Path
from typing import ClassVar


@dataclasses.dataclass
class VMSpec:
    """One VM to boot: the guest's files, its size, and where its channel lives."""

    kernel: Path
    initrd: Path | None
    rootfs: Path
    rootfs_read_only: bool
    kernel_args: str
    microvm_acpi: bool
    mem_mib: int
    vcpus: int
    accel: str
    run_dir: Path
    #: descriptors the host opened for the VMM: the agent's listening socket and the
    #: console file (QEMU), so that it never opens a path in the run directory
    agent_fd: int | None = None
    console_fd: int | None = None
    #: and the guest's files ("kernel", "initrd", "rootfs"), which its own uid may not
    #: be able to reach by path
    file_fds: dict[str, int] = dataclasses.field(default_factory=dict)

    def path_of(self, name: str) -> str:
        """How the VMM names a guest file: its descriptor where the host opened it."""
        if name in self.file_fds:
            return f"/proc/self/fd/{self.file_fds[name]}"
        return str(getattr(self, name))

    @property
    def socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"


class VMMDriver(abc.ABC):
    """One virtual machine monitor: how to find it, start a VM, reach the agent."""

    name: ClassVar[str]

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def path(self) -> str | None:
        return shutil.which(self.binary)

    @abc.abstractmethod
    def command(self, spec: VMSpec) -> list[str]:
        """The argv that boots ``spec``."""

    @abc.abstractmethod
    def label(self, accel: str) -> str:
        """What ran the code, in words (shown in the result)."""
