"""The microVM guest's default kernel: Debian's ``linux-source-6.1`` built with
``make tinyconfig`` plus ``data/microvm/guest-kernel.config.fragment`` (every driver built
in, no modules, no initramfs, Firecracker-capable), cached between builds."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .container import Stages
from .microvm_common import (
    COMMON_ARGS,
    GUEST_INIT,
    KERNEL,
    KERNEL_FRAGMENT,
    MicroVMImageError,
    run_tool,
)

KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: Bump when the way the kernel is built changes, so cached kernels are not reused.
KERNEL_RECIPE = 1
KERNEL_BUILD_TOOLS = ("make", "gcc", "bison", "flex", "bc", "perl")
SOURCE_KERNEL_ARGS = f"root=/dev/vda ro rootfstype=ext4 init={GUEST_INIT} {COMMON_ARGS}"


def default_cache_dir() -> Path:
    """Where built kernels are kept between builds (``/var/cache`` or ``$XDG_CACHE_HOME``)."""
    if os.geteuid() == 0:
        return Path("/var/cache/symbi-jupyter/microvm")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "symbi-jupyter" / "microvm"


def kernel_cache_key() -> str:
    """Identifies a kernel build: the fragment, the source tarball, the recipe."""
    st = KERNEL_SOURCE_TARBALL.stat()
    h = hashlib.sha256(KERNEL_FRAGMENT.read_bytes())
    h.update(f"{KERNEL_SOURCE_TARBALL}:{st.st_size}:{st.st_mtime_ns}:{KERNEL_RECIPE}".encode())
    return h.hexdigest()[:16]


def source_kernel(dest: Path, cache: Path, jobs: int, stages: Stages) -> dict[str, Any]:
    """Put the built ``vmlinux`` in ``dest`` (building it into ``cache`` unless there);
    return its part of the manifest."""
    cached = cache / f"kernel-{kernel_cache_key()}"
    if (cached / KERNEL).is_file():
        stages.next(f"cached in {cached}")
    else:
        stages.next(
            f"make tinyconfig + fragment, make -j{jobs} vmlinux "
            "(about 4 min on 2 cores; cached afterwards)"
        )
        _build_kernel(cached, jobs)
    shutil.copyfile(cached / KERNEL, dest / KERNEL)
    return {
        "initrd": False,
        "args": SOURCE_KERNEL_ARGS,
        "acpi": False,  # built without ACPI: QEMU lists the virtio-mmio devices on the cmdline
        "firecracker": True,
        "source": f"Debian {KERNEL_SOURCE_PACKAGE} {_dpkg_version(KERNEL_SOURCE_PACKAGE)}, "
        f"tinyconfig + {KERNEL_FRAGMENT.name}",
        "version": (cached / "kernel.release").read_text().strip(),
    }


def _build_kernel(cached: Path, jobs: int) -> None:
    """Build vmlinux into the cache directory ``cached`` (made atomically)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=cached.parent))
    try:
        src = build / "linux"
        src.mkdir()
        run_tool(
            ["tar", "-xJf", str(KERNEL_SOURCE_TARBALL), "-C", str(src), "--strip-components=1"],
            f"unpacking {KERNEL_SOURCE_TARBALL}",
        )
        _configure_kernel(src)
        log = build / "make.log"
        with open(log, "w") as out:
            proc = subprocess.run(
                ["make", "-s", f"-j{jobs}", "vmlinux"],
                cwd=src,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise MicroVMImageError(f"the kernel build failed ({proc.returncode}):\n{tail}")
        result = build / "result"
        result.mkdir()
        shutil.copyfile(src / "vmlinux", result / KERNEL)
        shutil.copyfile(src / ".config", result / "config")
        shutil.copyfile(src / "include" / "config" / "kernel.release", result / "kernel.release")
        _prune_cache(cached.parent)
        result.rename(cached)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _configure_kernel(src: Path) -> None:
    run_tool(["make", "-s", "tinyconfig"], "make tinyconfig", cwd=src)
    run_tool(
        ["scripts/kconfig/merge_config.sh", "-m", ".config", str(KERNEL_FRAGMENT)],
        "merging the kernel config fragment",
        cwd=src,
    )
    run_tool(["make", "-s", "olddefconfig"], "make olddefconfig", cwd=src)
    unmet = config_mismatches(
        parse_config(KERNEL_FRAGMENT.read_text()), parse_config((src / ".config").read_text())
    )
    if unmet:
        raise MicroVMImageError(
            f"options of {KERNEL_FRAGMENT.name} that the kernel configuration did not take "
            f"(a missing dependency?): {', '.join(unmet)}"
        )


def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X`` -> value of a Kconfig file; ``# CONFIG_X is not set`` becomes ``n``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if m := re.match(r"(CONFIG_\w+)=(.*)$", line.strip()):
            values[m[1]] = m[2]
        elif m := re.match(r"# (CONFIG_\w+) is not set$", line.strip()):
            values[m[1]] = "n"
    return values


def config_mismatches(wanted: dict[str, str], actual: dict[str, str]) -> list[str]:
    """The wanted options whose value did not make it into ``actual``."""
    return [f"{k}={v}" for k, v in wanted.items() if actual.get(k, "n") != v]


def _prune_cache(cache: Path) -> None:
    """Drop kernels of older fragments or sources: about 20 MB each."""
    for old in cache.glob("kernel-*"):
        shutil.rmtree(old, ignore_errors=True)


def _dpkg_version(package: str) -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else "(version unknown)"
