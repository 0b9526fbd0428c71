"""The microVM guest's root filesystem: Debian's essential set plus python3 and the
profile's packages (``mmdebstrap``), the guest init and the worker bootstrap, as a
read-only ext4 image."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from ...sandboxes.worker import BOOTSTRAP
from .container import PACKAGES as IMAGE_PACKAGES
from .container import SUITE, profile_packages
from .microvm_common import GUEST_DIR, INIT_SCRIPT, MicroVMImageError, run_tool

#: ``mount`` is not Essential in bookworm; the init needs it.
ROOTFS_PACKAGES = (*IMAGE_PACKAGES, "mount")
#: Documentation, manuals and translations are of no use in a sandbox: 20 % smaller.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)


def rootfs_packages(profile: str = "minimal") -> tuple[str, ...]:
    """The guest's packages on top of the essential set: the image's, and ``mount``."""
    return (*profile_packages(profile), "mount")


def debootstrap(work: Path, profile: str = "minimal") -> Path:
    """The root filesystem's files (``profile``'s packages on the essential set), as a
    tarball in ``work``."""
    tarball = work / "rootfs.tar"
    argv = [
        "mmdebstrap",
        "--variant=essential",
        f"--include={','.join(rootfs_packages(profile))}",
        "--quiet",
        *(f"--dpkgopt={o}" for o in DPKG_EXCLUDES),
        SUITE,
        str(tarball),
    ]
    run_tool(argv, "mmdebstrap")
    return tarball


def rootfs_image(tarball: Path, work: Path, image: Path) -> str:
    """Unpack ``tarball``, add the guest files, make the ext4 ``image``; return the
    Python version inside."""
    root = work / "root"
    root.mkdir()
    guest = root / GUEST_DIR.lstrip("/")
    script = [
        f"tar -xf {_q(tarball)} -C {_q(root)}",
        f"mkdir -p {_q(guest)} {_q(root / 'workspace')}",
        f"install -m 0755 {_q(INIT_SCRIPT)} {_q(guest / 'init')}",
        f"install -m 0644 /dev/stdin {_q(guest / 'bootstrap.py')}",
        # Sized from what is there: ext4's metadata and slack need about 10 % more.
        f"mb=$(du -sm {_q(root)} | cut -f1); inodes=$(find {_q(root)} | wc -l)",
        f"mke2fs -q -F -t ext4 -O ^has_journal -m 0 -L symbi-root -N $((inodes + 2048)) "
        f"-d {_q(root)} {_q(image)} $((mb * 11 / 10 + 32))M",
    ]
    # One shell, so that under fakeroot the owners recorded by tar reach mke2fs.
    argv = ["sh", "-ec", "\n".join(script)]
    if os.geteuid() != 0:
        argv = ["fakeroot", *argv]
    run_tool(argv, "making the root filesystem", input=BOOTSTRAP)
    return python_version(root)


def _q(path: Path) -> str:
    return shlex.quote(str(path))


def python_version(root: Path) -> str:
    """The version of ``python3.X-minimal`` in the dpkg database under ``root``."""
    status = (root / "var" / "lib" / "dpkg" / "status").read_text()
    for stanza in status.split("\n\n"):
        if re.search(r"^Package: python3\.\d+-minimal$", stanza, re.M):
            m = re.search(r"^Version: (?:\d+:)?([\d.]+)", stanza, re.M)
            if m:
                return m[1]
    raise MicroVMImageError("no python3.X-minimal package in the root filesystem")
