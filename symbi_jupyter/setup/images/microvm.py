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
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import Any

from ...errors import TierUnavailable
from ...limits import ResourceLimits
from ...sandboxes.base import ExecutionRequest
from ...sandboxes.microvm import PORT_NAME, MicroVMSandbox, default_artifacts_dir
from ...sandboxes.worker import BOOTSTRAP
from ...tiers import SecurityTier
from .container import PACKAGES as IMAGE_PACKAGES
from .container import SUITE, Say, Stages

FORMAT = 1
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
NOBODY = 65534

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

KERNEL_CHOICES = ("source", "debian")
KERNEL_SOURCE_PACKAGE = "linux-source-6.1"
KERNEL_SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: Bump when the way the kernel is built changes, so cached kernels are not reused.
KERNEL_RECIPE = 1
KERNEL_BUILD_TOOLS = ("make", "gcc", "bison", "flex", "bc", "perl")
DEBIAN_KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: Loaded in this order by the Debian kernel's initramfs (each needs the ones before).
DEBIAN_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console")

# reboot=t: on `reboot`, triple-fault at once (QEMU -no-reboot then exits) instead of
# trying ACPI and the keyboard controller first, which costs about 3 s under TCG.
COMMON_ARGS = "console=ttyS0 reboot=t quiet"
SOURCE_KERNEL_ARGS = f"root=/dev/vda ro rootfstype=ext4 init={GUEST_INIT} {COMMON_ARGS}"
DEBIAN_KERNEL_ARGS = COMMON_ARGS  # the initramfs's /init mounts /dev/vda itself

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


class MicroVMImageError(Exception):
    """The artefacts could not be built; the message says why and what to do."""


def default_cache_dir() -> Path:
    """Where built kernels are kept between builds (``/var/cache`` or ``$XDG_CACHE_HOME``)."""
    if os.geteuid() == 0:
        return Path("/var/cache/symbi-jupyter/microvm")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "symbi-jupyter" / "microvm"


# --- manifest -------------------------------------------------------------------------


def guest_fingerprint() -> dict[str, str]:
    """Hashes of this package's inputs to the guest: the init, the bootstrap, the kernel
    fragment. A manifest whose hashes differ was built by another version."""
    return {
        "init_sha256": _sha256(INIT_SCRIPT.read_bytes()),
        "bootstrap_sha256": _sha256(BOOTSTRAP.encode()),
        "fragment_sha256": _sha256(KERNEL_FRAGMENT.read_bytes()),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: Path | str | None = None) -> dict[str, Any] | None:
    """The manifest of ``directory`` if it is complete (format known, files present),
    else None."""
    directory = Path(directory or default_artifacts_dir())
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    files = [manifest.get("kernel"), manifest.get("rootfs"), manifest.get("initrd")]
    if not all(isinstance(f, str) for f in files[:2]):
        return None
    if not all((directory / f).is_file() for f in files if f is not None):
        return None
    return manifest


def is_current(manifest: dict[str, Any]) -> bool:
    """Whether ``manifest`` was built from this package's init, bootstrap and fragment."""
    return all(manifest.get(k) == v for k, v in guest_fingerprint().items())


def write_manifest(directory: Path, kernel: dict[str, Any], python: str) -> dict[str, Any]:
    """Write ``manifest.json`` for the artefacts in ``directory``; return it."""
    manifest = {
        "kernel": KERNEL,
        "initrd": INITRD if kernel["initrd"] else None,
        "rootfs": ROOTFS,
        "rootfs_type": "ext4",
        "kernel_args": kernel["args"],
        "microvm_acpi": kernel["acpi"],
        "firecracker_capable": kernel["firecracker"],
        "kernel_source": kernel["source"],
        "kernel_version": kernel["version"],
        "python": python,
        "agent_port": AGENT_PORT,
        "init": GUEST_INIT,
        **guest_fingerprint(),
        "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "format": FORMAT,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --- the build ------------------------------------------------------------------------


def build_artifacts(
    output: Path | str | None = None,
    *,
    kernel: str = "source",
    cache_dir: Path | str | None = None,
    jobs: int | None = None,
    check: bool = True,
    say: Say = print,
) -> dict[str, Any]:
    """Build the artefacts into ``output`` (replacing what is there); return the manifest.

    ``kernel`` is ``"source"`` (build from linux-source-6.1, cached) or ``"debian"``
    (Debian's cloud kernel plus an initramfs). ``check`` boots the result once
    through the Tier3 sandbox (:func:`boot_check`).
    """
    if kernel not in KERNEL_CHOICES:
        raise MicroVMImageError(f"kernel must be one of {', '.join(KERNEL_CHOICES)}")
    output = Path(output or default_artifacts_dir()).absolute()
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
        stages.next(f"mmdebstrap --variant=essential {SUITE} + {', '.join(ROOTFS_PACKAGES)}")
        tarball = _debootstrap(work)
        stages.next(f"ext4 image ({tarball.stat().st_size / 2**20:.0f} MiB of files)")
        python = _rootfs_image(tarball, work, new / ROOTFS)
        manifest = write_manifest(new, info, python)
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


def ensure_artifacts(output: Path | str | None = None, *, say: Say = print) -> dict[str, Any]:
    """Build the artefacts unless ``output`` holds a current, complete set."""
    output = Path(output or default_artifacts_dir())
    manifest = read_manifest(output)
    if manifest is not None and is_current(manifest):
        say(f"microvm: artefacts present in {output} (kernel {manifest['kernel_version']})")
        return manifest
    return build_artifacts(output, say=say)


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


def _run(
    argv: list[str], what: str, *, text: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=text, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise MicroVMImageError(f"{what} failed ({proc.returncode}): {tail}")
    return proc


# --- the kernel built from source -----------------------------------------------------


def kernel_cache_key() -> str:
    """Identifies a kernel build: the fragment, the source tarball, the recipe."""
    st = KERNEL_SOURCE_TARBALL.stat()
    h = hashlib.sha256(KERNEL_FRAGMENT.read_bytes())
    h.update(f"{KERNEL_SOURCE_TARBALL}:{st.st_size}:{st.st_mtime_ns}:{KERNEL_RECIPE}".encode())
    return h.hexdigest()[:16]


def _source_kernel(dest: Path, cache: Path, jobs: int, stages: Stages) -> dict[str, Any]:
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
        _run(
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
    _run(["make", "-s", "tinyconfig"], "make tinyconfig", cwd=src)
    _run(
        ["scripts/kconfig/merge_config.sh", "-m", ".config", str(KERNEL_FRAGMENT)],
        "merging the kernel config fragment",
        cwd=src,
    )
    _run(["make", "-s", "olddefconfig"], "make olddefconfig", cwd=src)
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


# --- Debian's cloud kernel ------------------------------------------------------------


def _debian_kernel(dest: Path, work: Path, stages: Stages) -> dict[str, Any]:
    stages.next(f"apt-get download {DEBIAN_KERNEL_PACKAGE} busybox-static")
    package = _debian_image_package()
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", "-q", package, "busybox-static"], "apt-get download", cwd=debs)
    tree = work / "kernel-deb"
    for deb in debs.glob("*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(tree)], f"unpacking {deb.name}")
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
    out = _run(
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
    cpio = _run(
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


# --- the root filesystem --------------------------------------------------------------


def _debootstrap(work: Path) -> Path:
    tarball = work / "rootfs.tar"
    argv = [
        "mmdebstrap",
        "--variant=essential",
        f"--include={','.join(ROOTFS_PACKAGES)}",
        "--quiet",
        *(f"--dpkgopt={o}" for o in DPKG_EXCLUDES),
        SUITE,
        str(tarball),
    ]
    _run(argv, "mmdebstrap")
    return tarball


def _rootfs_image(tarball: Path, work: Path, image: Path) -> str:
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
    _run(argv, "making the root filesystem", input=BOOTSTRAP)
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


# --- booting it -----------------------------------------------------------------------

# Run in the worker of the freshly built guest: who runs it, and on what.
_CHECK_SOURCE = """import json, os, platform
print(json.dumps({"uid": os.getuid(), "python": platform.python_version(),
                  "kernel": os.uname().release}))
"""


def boot_check(directory: Path, timeout: float = 120) -> str:
    """Boot the artefacts in ``directory`` once through the Tier3 sandbox (QEMU, TCG) and
    run a snippet in its worker; returns a one-line summary. Raises
    :class:`MicroVMImageError` if that fails."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise MicroVMImageError(f"{directory} holds no complete set of artefacts")
    with tempfile.TemporaryDirectory(prefix="symbi-vmcheck-") as tmp:
        sandbox = MicroVMSandbox(
            artifacts_dir=str(directory),
            vmm="qemu",
            acceleration="tcg",
            pool_size=0,
            run_root=tmp,
            boot_timeout_seconds=timeout,
        )
        if shutil.which(sandbox.qemu_binary) is None:
            return (
                f"boot check skipped: {sandbox.qemu_binary} not found "
                "(apt-get install qemu-system-x86)"
            )
        request = ExecutionRequest(
            tier=SecurityTier.TIER3,
            code=_CHECK_SOURCE.encode(),
            language="python3",
            limits=ResourceLimits(
                max_memory_mb=256, max_processes=64, max_open_files=256, timeout_seconds=timeout
            ),
        )
        try:
            result = sandbox.run(request)
        except TierUnavailable as exc:
            raise MicroVMImageError(f"the guest did not answer: {exc}") from None
        finally:
            sandbox.close()
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        seen = {}
    if (
        not result.success
        or seen.get("uid") != NOBODY
        or (seen.get("kernel") != manifest["kernel_version"])
    ):
        raise MicroVMImageError(
            f"unexpected answer from the guest (exit {result.exit_code}, "
            f"stopped by {result.killed_by}): {result.stdout}{result.stderr}"
        )
    return (
        f"python {seen['python']} as uid {seen['uid']} on {seen['kernel']}: "
        f"answered {result.startup_seconds:.2f} s after launch ({result.sandbox_detail})"
    )
