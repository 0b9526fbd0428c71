"""``symbi-jupyter image build --tier3``: the microVM guest's kernel and root filesystem.

Everything is built offline from Debian packages into one directory
(:func:`default_artifacts_dir`):

- ``vmlinux``: an uncompressed ELF kernel that QEMU ``-M microvm`` boots directly (PVH).
  By default built from Debian's ``linux-source-6.1`` with ``make tinyconfig`` plus
  ``data/microvm/guest-kernel.config.fragment``: every driver built in, no modules, no
  initramfs, Firecracker-capable. The build (about 4 minutes on 2 cores) is cached
  under :func:`default_cache_dir`, so a rebuild takes seconds. ``kernel="debian"``
  instead extracts Debian's cloud kernel from its package and adds an initramfs that
  loads the virtio modules: no compiler needed, but it boots about 1 s slower here.
- ``rootfs.img``: ext4, read-only, Debian bookworm's essential set plus python3
  (``mmdebstrap``), the guest init ``/usr/lib/symbi/init`` (``data/microvm/init``) and
  the worker bootstrap ``/usr/lib/symbi/bootstrap.py``.
- ``initramfs.cpio.gz``: only with the Debian kernel.
- ``manifest.json``: what the sandbox needs to boot them (see :func:`write_manifest`).

A rebuild is assembled in a temporary directory beside the output and renamed over it.

This module runs the build; its steps live beside it: ``microvm_kernel`` (the kernel
built from source), ``microvm_debian_kernel`` (Debian's kernel and its initramfs),
``microvm_rootfs``, ``microvm_manifest``, ``microvm_check`` (the boot check) and
``microvm_common`` (names and helpers they share). Their public names are re-exported
here, the one import other modules and the tests use.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...sandboxes.microvm import default_artifacts_dir
from .container import SUITE, ImageError, Say, Stages
from .microvm_check import NOBODY, boot_check
from .microvm_common import (
    AGENT_PORT,
    COMMON_ARGS,
    DATA,
    GUEST_BOOTSTRAP,
    GUEST_DIR,
    GUEST_INIT,
    INIT_SCRIPT,
    INITRD,
    KERNEL,
    KERNEL_FRAGMENT,
    MANIFEST,
    READY_LINE,
    ROOTFS,
    MicroVMImageError,
)
from .microvm_debian_kernel import (
    DEBIAN_KERNEL_ARGS,
    DEBIAN_KERNEL_PACKAGE,
    DEBIAN_MODULES,
    extract_vmlinux,
)
from .microvm_debian_kernel import debian_kernel as _debian_kernel
from .microvm_kernel import (
    KERNEL_BUILD_TOOLS,
    KERNEL_RECIPE,
    KERNEL_SOURCE_PACKAGE,
    KERNEL_SOURCE_TARBALL,
    SOURCE_KERNEL_ARGS,
    config_mismatches,
    default_cache_dir,
    kernel_cache_key,
    parse_config,
)
from .microvm_kernel import source_kernel as _source_kernel
from .microvm_manifest import FORMAT, guest_fingerprint, is_current, read_manifest, write_manifest
from .microvm_rootfs import DPKG_EXCLUDES, ROOTFS_PACKAGES, python_version, rootfs_packages
from .microvm_rootfs import debootstrap as _debootstrap
from .microvm_rootfs import rootfs_image as _rootfs_image

# _source_kernel, _debian_kernel, _debootstrap and _rootfs_image, the build's steps, are
# imported under private names of this module because build_artifacts looks them up here
# when it runs: the tests replace them on it with stubs.

__all__ = [
    "AGENT_PORT",
    "BUILD_APT_PACKAGES",
    "COMMON_ARGS",
    "DATA",
    "DEBIAN_KERNEL_ARGS",
    "DEBIAN_KERNEL_PACKAGE",
    "DEBIAN_MODULES",
    "DPKG_EXCLUDES",
    "FORMAT",
    "GUEST_BOOTSTRAP",
    "GUEST_DIR",
    "GUEST_INIT",
    "INITRD",
    "INIT_SCRIPT",
    "KERNEL",
    "KERNEL_BUILD_TOOLS",
    "KERNEL_CHOICES",
    "KERNEL_FRAGMENT",
    "KERNEL_RECIPE",
    "KERNEL_SOURCE_PACKAGE",
    "KERNEL_SOURCE_TARBALL",
    "MANIFEST",
    "NOBODY",
    "READY_LINE",
    "ROOTFS",
    "ROOTFS_PACKAGES",
    "SOURCE_KERNEL_ARGS",
    "MicroVMImageError",
    "Stages",
    "boot_check",
    "build_artifacts",
    "config_mismatches",
    "default_artifacts_dir",
    "default_cache_dir",
    "ensure_artifacts",
    "extract_vmlinux",
    "guest_fingerprint",
    "is_current",
    "kernel_cache_key",
    "parse_config",
    "python_version",
    "read_manifest",
    "rootfs_packages",
    "write_manifest",
]

KERNEL_CHOICES = ("source", "debian")

#: Build packages of `symbi-jupyter setup` for the tier3 artefacts.
BUILD_APT_PACKAGES = (
    "mmdebstrap",
    "e2fsprogs",
    "cpio",
    "lz4",
    KERNEL_SOURCE_PACKAGE,
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
)


def build_artifacts(
    output: Path | str | None = None,
    *,
    profile: str = "minimal",
    kernel: str = "source",
    cache_dir: Path | str | None = None,
    jobs: int | None = None,
    check: bool = True,
    say: Say = print,
) -> dict[str, Any]:
    """Build the artefacts into ``output`` (replacing what is there); return the manifest.

    ``kernel`` is ``"source"`` (build from linux-source-6.1, cached) or ``"debian"``
    (Debian's cloud kernel plus an initramfs). ``profile`` chooses the rootfs's packages
    (:data:`.container.PROFILES`) and the default ``output``. ``check`` boots the result
    once through the Tier3 sandbox (:func:`boot_check`).
    """
    if kernel not in KERNEL_CHOICES:
        raise MicroVMImageError(f"kernel must be one of {', '.join(KERNEL_CHOICES)}")
    try:
        packages = rootfs_packages(profile)
    except ImageError as exc:
        raise MicroVMImageError(str(exc)) from None
    output = Path(output or default_artifacts_dir(profile)).absolute()
    cache = Path(cache_dir or default_cache_dir())
    _require_tools(kernel)
    _check_replaceable(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    names = ["kernel", "rootfs", "image", *(["boot check"] if check else []), "install"]
    stages = Stages(names, say)
    new = Path(tempfile.mkdtemp(prefix=f".{output.name}.new-", dir=output.parent))
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.work-", dir=output.parent))
    try:
        if kernel == "source":
            info = _source_kernel(new, cache, jobs or _cpus(), stages)
        else:
            info = _debian_kernel(new, work, stages)
        stages.next(f"mmdebstrap --variant=essential {SUITE} + {', '.join(packages)}")
        tarball = _debootstrap(work, profile)
        stages.next(f"ext4 image ({tarball.stat().st_size / 2**20:.0f} MiB of files)")
        python = _rootfs_image(tarball, work, new / ROOTFS)
        manifest = write_manifest(new, info, python, profile)
        if check:
            stages.next("boot it under QEMU")
            say(f"  {boot_check(new)}")
        stages.next(str(output))
        _replace_dir(new, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)
    stages.finish(f"{output}: kernel {manifest['kernel_version']}, python {python}")
    return manifest


def ensure_artifacts(
    output: Path | str | None = None, *, profile: str = "minimal", say: Say = print
) -> dict[str, Any]:
    """Build ``profile``'s artefacts unless ``output`` holds a current, complete set."""
    output = Path(output or default_artifacts_dir(profile))
    manifest = read_manifest(output)
    if manifest is not None and is_current(manifest):
        say(f"microvm: artefacts present in {output} (kernel {manifest['kernel_version']})")
        return manifest
    return build_artifacts(output, profile=profile, say=say)


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _require_tools(kernel: str) -> None:
    tools = ["mmdebstrap", "mke2fs"]
    if kernel == "source":
        tools += KERNEL_BUILD_TOOLS
    else:
        tools += ["apt-get", "apt-cache", "dpkg-deb", "cpio"]
    if os.geteuid() != 0:
        tools.append("fakeroot")  # to keep the rootfs's owners when not root
    missing = [t for t in tools if shutil.which(t) is None]
    if kernel == "source" and not KERNEL_SOURCE_TARBALL.is_file():
        missing.append(f"{KERNEL_SOURCE_TARBALL} (package {KERNEL_SOURCE_PACKAGE})")
    if missing:
        raise MicroVMImageError(
            f"missing to build the microVM artefacts: {', '.join(missing)}. Run symbi-jupyter "
            f"setup as root, or: apt-get install -y {' '.join(BUILD_APT_PACKAGES)}"
        )


def _check_replaceable(output: Path) -> None:
    """Refuse to replace a directory that is not ours (say, ``--output ~``)."""
    if output.exists() and any(output.iterdir()) and not (output / MANIFEST).exists():
        raise MicroVMImageError(
            f"{output} exists and holds no {MANIFEST}: not replacing it; choose an empty "
            "or new directory"
        )


def _replace_dir(new: Path, output: Path) -> None:
    """Put ``new`` in place of ``output``; a reader sees the old set or the new one.

    Files of the old set stay readable by VMs that have them open.
    """
    new.chmod(0o755)  # mkdtemp made it 0700
    if not output.exists():
        new.rename(output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    output.rename(old)
    new.rename(output)
    shutil.rmtree(old, ignore_errors=True)
