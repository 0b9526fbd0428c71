"""The microVM guest's alternative kernel: Debian's cloud kernel, extracted from its
package, with a busybox initramfs that loads the virtio modules. No compiler needed, but
it boots about 1 s slower than the kernel built from source."""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

from .container import Stages
from .microvm_common import (
    COMMON_ARGS,
    GUEST_INIT,
    INITRD,
    KERNEL,
    MicroVMImageError,
    run_tool,
)

DEBIAN_KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: Loaded in this order by the Debian kernel's initramfs (each needs the ones before).
DEBIAN_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console")
DEBIAN_KERNEL_ARGS = COMMON_ARGS  # the initramfs's /init mounts /dev/vda itself


def debian_kernel(dest: Path, work: Path, stages: Stages) -> dict[str, Any]:
    """Put Debian's kernel and its initramfs in ``dest`` (downloading into ``work``);
    return their part of the manifest."""
    stages.next(f"apt-get download {DEBIAN_KERNEL_PACKAGE} busybox-static")
    package = _debian_image_package()
    debs = work / "debs"
    debs.mkdir()
    run_tool(["apt-get", "download", "-q", package, "busybox-static"], "apt-get download", cwd=debs)
    tree = work / "kernel-deb"
    for deb in debs.glob("*.deb"):
        run_tool(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
    version = package.removeprefix("linux-image-")
    bzimage = (tree / "boot" / f"vmlinuz-{version}").read_bytes()
    (dest / KERNEL).write_bytes(extract_vmlinux(bzimage))
    _debian_initramfs(tree, version, work / "initramfs", dest / INITRD)
    return {
        "initrd": True,
        "args": DEBIAN_KERNEL_ARGS,
        "acpi": True,  # no VIRTIO_MMIO_CMDLINE_DEVICES: it finds its devices through ACPI
        "firecracker": False,
        "source": f"Debian {package} {_apt_version(package)}, vmlinux extracted from vmlinuz; "
        f"modules {', '.join(DEBIAN_MODULES)} loaded by the initramfs",
        "version": version,
    }


def _debian_image_package() -> str:
    """The versioned image package ``linux-image-cloud-amd64`` depends on."""
    out = run_tool(
        ["apt-cache", "depends", "--important", DEBIAN_KERNEL_PACKAGE],
        f"apt-cache depends {DEBIAN_KERNEL_PACKAGE}",
    ).stdout
    found = re.findall(r"Depends: (linux-image-\S+)", out)
    if not found:
        raise MicroVMImageError(f"cannot tell which kernel {DEBIAN_KERNEL_PACKAGE} is: {out}")
    return found[0]


def _apt_version(package: str) -> str:
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
    m = re.search(r"Candidate: (\S+)", out)
    return m[1] if m else "(version unknown)"


#: Compressed-kernel magics, as scripts/extract-vmlinux looks for them.
_MAGICS = {
    "gzip": b"\x1f\x8b\x08",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
    "lz4": b"\x02\x21\x4c\x18",
}


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (the logic of extract-vmlinux)."""
    for kind, magic in _MAGICS.items():
        start = bzimage.find(magic)
        while start != -1:
            data = _decompress(kind, bzimage[start:])
            if data.startswith(b"\x7fELF"):
                return data
            start = bzimage.find(magic, start + 1)
    raise MicroVMImageError("no compressed ELF kernel found in the bzImage")


def _decompress(kind: str, data: bytes) -> bytes:
    """Decompress the stream at the start of ``data``; trailing bytes are ignored."""
    try:
        if kind == "gzip":
            return zlib.decompressobj(wbits=31).decompress(data)
        if kind == "xz":
            return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(data)
    except (EOFError, lzma.LZMAError, zlib.error):
        return b""
    if shutil.which(kind) is None:
        raise MicroVMImageError(f"the kernel is {kind}-compressed: apt-get install -y {kind}")
    # The tools complain about the bytes after the stream but write it out whole.
    return subprocess.run([kind, "-dc"], input=data, capture_output=True).stdout


def _debian_initramfs(tree: Path, version: str, root: Path, out: Path) -> None:
    """A busybox initramfs that loads the virtio modules and switches to the rootfs."""
    moddir = tree / "lib" / "modules" / version / "kernel"
    for sub in ("bin", "lib/modules", "dev", "proc", "newroot"):
        (root / sub).mkdir(parents=True)
    shutil.copyfile(tree / "bin" / "busybox", root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    for name in DEBIAN_MODULES:
        found = next(moddir.rglob(f"{name}.ko"), None)
        if found is None:
            raise MicroVMImageError(f"module {name}.ko not found in the {version} package")
        shutil.copyfile(found, root / "lib" / "modules" / f"{name}.ko")
    init = root / "init"
    init.write_text(_initramfs_init())
    init.chmod(0o755)
    listing = "\n".join(str(p.relative_to(root)) for p in sorted(root.rglob("*"))) + "\n"
    cpio = run_tool(
        ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
        "cpio",
        cwd=root,
        input=listing.encode(),
        text=False,
    ).stdout
    out.write_bytes(gzip.compress(cpio, compresslevel=6))


def _initramfs_init() -> str:
    loads = " ".join(DEBIAN_MODULES)
    return f"""#!/bin/busybox sh
# Debian's kernel has virtio as modules: load them, then hand over to the rootfs's init.
bb=/bin/busybox
$bb mount -t devtmpfs devtmpfs /dev
for m in {loads}; do $bb insmod /lib/modules/$m.ko || echo "symbi-guest: insmod $m failed"; done
if ! $bb mount -o ro -t ext4 /dev/vda /newroot; then
\techo "symbi-guest: cannot mount the root filesystem /dev/vda" >/dev/console
\t$bb sh -c 'echo b > /proc/sysrq-trigger' 2>/dev/null; exit 1
fi
$bb mount --move /dev /newroot/dev
exec $bb switch_root /newroot {GUEST_INIT}
"""
