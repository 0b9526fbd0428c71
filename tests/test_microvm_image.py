"""The Tier3 guest artefacts: built for real once per session, and each kernel variant
booted once through the Tier3 sandbox for a smoke check. What the guest then does (its
user, limits, filesystems, network) is tested in test_microvm.py. The cheap parts
(manifest, atomic rebuild, config checks, the command line the manifest gives) are
tested without QEMU."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from symbi_jupyter import ResourceLimits
from symbi_jupyter.cli import build_parser
from symbi_jupyter.sandboxes.microvm import MicroVMSandbox, QEMUDriver, _open_for_vmm
from symbi_jupyter.setup.host import tier3_packages
from symbi_jupyter.setup.images import microvm as mi

from .helpers import need

QEMU = "qemu-system-x86_64"


# --- real builds and boots ------------------------------------------------------------


def _build_reason() -> str | None:
    """Why this machine cannot build the artefacts quickly, or None if it can."""
    try:
        mi._require_tools("source")
    except mi.MicroVMImageError as exc:
        return str(exc)
    if os.geteuid() != 0 and shutil.which("mmdebstrap") is None:
        return "mmdebstrap is missing"
    return None


def _kernel_cached() -> bool:
    try:
        key = mi.kernel_cache_key()
    except OSError:
        return False
    return (mi.default_cache_dir() / f"kernel-{key}" / mi.KERNEL).is_file()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A complete set of artefacts, built once: into a temporary directory when the kernel
    is cached (about 30 s); else the default directory's set if current; else a full
    build (about 4 min on 2 cores)."""
    need(
        shutil.which(QEMU) is not None,
        f"{QEMU} not found (apt-get install qemu-system-x86, or symbi-jupyter setup)",
        tier="microvm",
    )
    existing = mi.read_manifest(mi.default_artifacts_dir())
    reason = _build_reason()
    if existing and mi.is_current(existing) and (reason or not _kernel_cached()):
        return mi.default_artifacts_dir(), existing
    need(reason is None, f"cannot build the microVM artefacts: {reason}", tier="microvm")
    out = tmp_path_factory.mktemp("microvm") / "artifacts"
    manifest = mi.build_artifacts(out, say=lambda line: None)
    return out, manifest


def test_manifest_of_the_build(artifacts: tuple[Path, dict[str, Any]]) -> None:
    directory, manifest = artifacts
    assert mi.read_manifest(directory) == manifest
    assert mi.is_current(manifest)
    assert manifest["format"] == 1 and manifest["rootfs_type"] == "ext4"
    assert manifest["python"].startswith("3.11.")
    assert manifest["kernel_version"].endswith("-symbi")
    assert manifest["initrd"] is None and manifest["microvm_acpi"] is False
    assert manifest["firecracker_capable"] is True
    assert "root=/dev/vda" in manifest["kernel_args"]
    assert f"init={mi.GUEST_INIT}" in manifest["kernel_args"]
    head = (directory / manifest["kernel"]).read_bytes()[:4]
    assert head == b"\x7fELF", "vmlinux must be the uncompressed ELF kernel"


def test_the_built_guest_boots_through_the_sandbox(artifacts) -> None:
    """The smoke check the build ends with: the sandbox boots the set, and its worker
    runs as nobody on the kernel the manifest names."""
    directory, manifest = artifacts
    summary = mi.boot_check(directory)
    assert summary.startswith(
        f"python {manifest['python']} as uid {mi.NOBODY} on {manifest['kernel_version']}: "
    ), summary


def test_debian_kernel_variant_boots(tmp_path: Path) -> None:
    """The measured alternative: Debian's cloud kernel with an initramfs."""
    need(shutil.which(QEMU) is not None, f"{QEMU} not found", tier="microvm")
    try:
        mi._require_tools("debian")
    except mi.MicroVMImageError as exc:
        need(False, str(exc), tier="microvm")
    lines: list[str] = []
    manifest = mi.build_artifacts(tmp_path / "debian", kernel="debian", say=lines.append)
    assert manifest["initrd"] == mi.INITRD and manifest["microvm_acpi"] is True
    assert manifest["firecracker_capable"] is False
    assert any("as uid 65534 on " + manifest["kernel_version"] in line for line in lines)


# --- cheap parts ----------------------------------------------------------------------


def fake_set(directory: Path, **overrides: Any) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    for name in (mi.KERNEL, mi.ROOTFS):
        (directory / name).write_bytes(b"x")
    info = {
        "initrd": False,
        "args": mi.SOURCE_KERNEL_ARGS,
        "acpi": False,
        "firecracker": True,
        "source": "test",
        "version": "6.1.0-test",
    }
    manifest = mi.write_manifest(directory, info, "3.11.2")
    manifest.update(overrides)
    (directory / mi.MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_manifest_fields(tmp_path: Path) -> None:
    manifest = fake_set(tmp_path)
    assert set(manifest) >= {
        "kernel",
        "initrd",
        "rootfs",
        "rootfs_type",
        "kernel_args",
        "microvm_acpi",
        "firecracker_capable",
        "kernel_source",
        "kernel_version",
        "python",
        "built",
        "format",
    }
    assert manifest["initrd"] is None and manifest["format"] == 1
    assert mi.read_manifest(tmp_path) == manifest and mi.is_current(manifest)


def test_read_manifest_rejects_incomplete_sets(tmp_path: Path) -> None:
    assert mi.read_manifest(tmp_path / "none") is None
    fake_set(tmp_path / "a", format=2)
    assert mi.read_manifest(tmp_path / "a") is None
    fake_set(tmp_path / "b", initrd="initramfs.cpio.gz")  # named but absent
    assert mi.read_manifest(tmp_path / "b") is None
    stale = fake_set(tmp_path / "c", bootstrap_sha256="0" * 64)
    assert mi.read_manifest(tmp_path / "c") == stale and not mi.is_current(stale)


def test_default_dirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert mi.default_artifacts_dir() == Path("/var/lib/symbi-jupyter/microvm")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert mi.default_artifacts_dir() == tmp_path / "symbi-jupyter" / "microvm"


@pytest.fixture
def fake_build(monkeypatch: pytest.MonkeyPatch):
    """build_artifacts with the slow steps replaced by stubs."""
    calls: list[str] = []

    def kernel(dest: Path, cache: Path, jobs: int, stages: mi.Stages) -> dict[str, Any]:
        stages.next("stub")
        (dest / mi.KERNEL).write_bytes(b"\x7fELF" + str(len(calls)).encode())
        calls.append("kernel")
        return {
            "initrd": False,
            "args": mi.SOURCE_KERNEL_ARGS,
            "acpi": False,
            "firecracker": True,
            "source": "stub",
            "version": f"6.1.0-stub{len(calls)}",
        }

    def rootfs(tarball: Path, work: Path, image: Path) -> str:
        image.write_bytes(b"ext4")
        return "3.11.2"

    monkeypatch.setattr(mi, "_require_tools", lambda kernel: None)
    monkeypatch.setattr(mi, "_source_kernel", kernel)
    monkeypatch.setattr(mi, "_debootstrap", _stub_tarball)
    monkeypatch.setattr(mi, "_rootfs_image", rootfs)
    return calls


def _stub_tarball(work: Path, profile: str = "minimal") -> Path:
    tarball = work / "rootfs.tar"
    tarball.write_bytes(b"")
    return tarball


def test_rebuild_replaces_the_set_and_leaves_nothing_behind(fake_build, tmp_path: Path) -> None:
    out = tmp_path / "microvm"
    first = mi.build_artifacts(out, check=False, say=lambda line: None)
    (out / "stray").write_text("from the old set")
    second = mi.build_artifacts(out, check=False, say=lambda line: None)
    assert first["kernel_version"] != second["kernel_version"]
    assert mi.read_manifest(out) == second
    assert sorted(p.name for p in out.iterdir()) == sorted([mi.KERNEL, mi.MANIFEST, mi.ROOTFS])
    assert [p.name for p in tmp_path.iterdir()] == ["microvm"], "temporary dirs left"
    assert oct(out.stat().st_mode & 0o777) == "0o755"


def test_failed_rebuild_keeps_the_old_set(fake_build, monkeypatch, tmp_path: Path) -> None:
    out = tmp_path / "microvm"
    before = mi.build_artifacts(out, check=False, say=lambda line: None)

    def broken(work: Path, profile: str = "minimal") -> Path:
        raise mi.MicroVMImageError("mmdebstrap failed")

    monkeypatch.setattr(mi, "_debootstrap", broken)
    with pytest.raises(mi.MicroVMImageError):
        mi.build_artifacts(out, check=False, say=lambda line: None)
    assert mi.read_manifest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["microvm"]


def test_refuses_to_replace_a_foreign_directory(fake_build, tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("not ours")
    with pytest.raises(mi.MicroVMImageError, match="not replacing"):
        mi.build_artifacts(tmp_path, check=False, say=lambda line: None)
    assert (tmp_path / "precious").read_text() == "not ours"


def test_fragment_has_what_the_guest_needs() -> None:
    wanted = mi.parse_config(mi.KERNEL_FRAGMENT.read_text())
    for option in (
        "VIRTIO_MMIO",
        "VIRTIO_MMIO_CMDLINE_DEVICES",
        "VIRTIO_BLK",
        "VIRTIO_CONSOLE",
        "EXT4_FS",
        "DEVTMPFS",
        "TMPFS",
        "PROC_FS",
        "SYSFS",
        "PROC_PAGE_MONITOR",
        "MULTIUSER",
        "FUTEX",
        "EPOLL",
        "UNIX",
        "PVH",
        "SERIAL_8250_CONSOLE",
        "PRINTK",
        "MAGIC_SYSRQ",
        "BINFMT_ELF",
        "BINFMT_SCRIPT",
        "SMP",
        "POSIX_TIMERS",
        "SHMEM",
    ):
        assert wanted.get(f"CONFIG_{option}") == "y", option
    assert wanted["CONFIG_MODULES"] == "n" and wanted["CONFIG_PCI"] == "n"


def test_config_mismatches() -> None:
    actual = mi.parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x"\n')
    assert actual == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"x"'}
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_D": "n", "CONFIG_E": "y"}
    assert mi.config_mismatches(wanted, actual) == ["CONFIG_E=y"]


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress])
def test_extract_vmlinux(compress) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    assert mi.extract_vmlinux(b"MZ setup code" + compress(elf) + b"trailer") == elf
    with pytest.raises(mi.MicroVMImageError):
        mi.extract_vmlinux(b"MZ" + compress(b"not an elf"))


def test_python_version_from_the_dpkg_database(tmp_path: Path) -> None:
    status = tmp_path / "var" / "lib" / "dpkg" / "status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: python3\nVersion: 3.11.2-1+b1\n\n"
        "Package: python3.11-minimal\nVersion: 3.11.2-6+deb12u6\n"
    )
    assert mi.python_version(tmp_path) == "3.11.2"


def test_the_sandbox_boots_what_the_manifest_says(tmp_path: Path) -> None:
    """The QEMU command line the sandbox makes of a built set: the manifest's kernel
    arguments, then numbers only."""
    manifest = fake_set(tmp_path / "set")
    sandbox = MicroVMSandbox(artifacts_dir=str(tmp_path / "set"))
    limits = ResourceLimits(max_memory_mb=512, max_processes=5, max_file_size_mb=2)
    (tmp_path / "run").mkdir()
    spec = sandbox.vm_spec(sandbox.manifest(), limits, "tcg", tmp_path / "run")
    opened = _open_for_vmm(spec)  # as the sandbox does before it starts QEMU
    argv = QEMUDriver(QEMU).command(spec)
    text = " ".join(argv)
    assert Path(argv[0]).name == QEMU and argv[1:3] == ["-M", "microvm,acpi=off"]
    assert "-m 512 -smp 1" in text and "-no-reboot" in text and "-initrd" not in text
    append = argv[argv.index("-append") + 1]
    assert append.startswith(manifest["kernel_args"] + " ")
    host_args = append.removeprefix(manifest["kernel_args"]).split()
    assert "symbi.nproc=5" in host_args and "symbi.fsize=2097152" in host_args
    assert all(re.fullmatch(r"[\w.]+=[\w.-]+", a) for a in host_args), host_args
    # The VMM, of its own uid, gets the guest's files and its channel as descriptors
    # the host opened: no path of the host's for it to open.
    fds = spec.file_fds
    assert os.readlink(f"/proc/self/fd/{fds['rootfs']}") == str(tmp_path / "set" / mi.ROOTFS)
    assert os.readlink(f"/proc/self/fd/{fds['kernel']}") == str(spec.kernel)
    assert f"-add-fd fd={fds['rootfs']},set=2" in text
    assert "id=root,format=raw,if=none,file=/dev/fdset/2,readonly=on" in text
    assert argv[argv.index("-kernel") + 1] == f"/proc/self/fd/{fds['kernel']}"
    assert "virtserialport,chardev=agent,name=symbi.agent" in text
    assert f"socket,id=agent,fd={spec.agent_fd},server=on,wait=off" in text
    assert f"-add-fd fd={spec.console_fd},set=1 -serial file:/dev/fdset/1" in text
    for fd in opened:
        os.close(fd)


def test_init_script_is_valid_sh() -> None:
    subprocess.run(["sh", "-n", str(mi.INIT_SCRIPT)], check=True)
    text = mi.INIT_SCRIPT.read_text()
    assert "setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups --no-new-privs" in text
    assert mi.READY_LINE.split(": ")[1] in text and mi.AGENT_PORT in text


def test_cli_and_setup_wiring() -> None:
    args = build_parser().parse_args(
        ["image", "build", "--tier3", "--output", "/tmp/x", "--kernel", "debian"]
    )
    assert args.tier3 and str(args.output) == "/tmp/x" and args.kernel == "debian"
    assert build_parser().parse_args(["setup", "--no-tier3"]).no_tier3
    packages = tier3_packages()
    assert "qemu-system-x86" in packages and mi.KERNEL_SOURCE_PACKAGE in packages


def test_setup_installs_what_dpkg_only_remembers(tmp_path: Path) -> None:
    """A package dpkg knows of but never installed ("unknown ok not-installed", as
    bison and flex were on a reused machine) or whose files were removed is missing,
    so that setup installs it; the real dpkg-query reads a database made here."""
    from symbi_jupyter.setup.host import _dpkg_installed

    need(shutil.which("dpkg-query") is not None, "no dpkg-query on this host")
    fields = "Version: 1\nArchitecture: all\nMaintainer: t\nDescription: t\n"
    (tmp_path / "info").mkdir()
    (tmp_path / "available").touch()
    (tmp_path / "status").write_text(
        f"Package: present\nStatus: install ok installed\n{fields}\n"
        "Package: remembered\nStatus: unknown ok not-installed\n\n"
        f"Package: removed\nStatus: deinstall ok config-files\n{fields}\n"
        f"Package: held\nStatus: hold ok installed\n{fields}"
    )
    installed = {
        name: _dpkg_installed(name, admindir=str(tmp_path))
        for name in ("present", "remembered", "removed", "held", "unknown")
    }
    assert installed == {
        "present": True,
        "remembered": False,
        "removed": False,
        "held": True,
        "unknown": False,
    }
