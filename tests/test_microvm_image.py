"""The Tier3 guest artefacts: built for real once per session, booted under QEMU
``-M microvm`` exactly as the sandbox boots them, and spoken to through the worker
protocol on the virtio-serial port. The cheap parts (manifest, atomic rebuild, config
checks) are tested without QEMU."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from symbi_jupyter import microvm_image as mi
from symbi_jupyter.cli import build_parser
from symbi_jupyter.provision import tier3_packages
from symbi_jupyter.sandboxes import _worker

from .conftest import need

QEMU = "qemu-system-x86_64"
WORKER_SOURCE = Path(_worker.__file__).read_bytes()
HOST_LIMITS = {"nproc": 256, "fsize": 104857600, "nofile": 1024, "cpu": 300}


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
    need(shutil.which(QEMU) is not None,
         f"{QEMU} not found (apt-get install qemu-system-x86, or symbi-jupyter setup)",
         tier="microvm")
    existing = mi.read_manifest(mi.default_artifacts_dir())
    reason = _build_reason()
    if existing and mi.is_current(existing) and (reason or not _kernel_cached()):
        return mi.default_artifacts_dir(), existing
    need(reason is None, f"cannot build the microVM artefacts: {reason}", tier="microvm")
    out = tmp_path_factory.mktemp("microvm") / "artifacts"
    manifest = mi.build_artifacts(out, say=lambda line: None)
    return out, manifest


class Guest:
    """One VM booted per the guest contract, with the worker bootstrapped on its port."""

    def __init__(self, directory: Path, manifest: dict[str, Any], tmp: Path,
                 memory_mib: int = 256, cpus: int = 1, **limits: int) -> None:
        self.manifest = manifest
        self.console = tmp / "console.log"
        self.sock_path = tmp / "agent.sock"
        argv = mi.qemu_argv(directory, manifest, socket_path=self.sock_path,
                            console=self.console, memory_mib=memory_mib, cpus=cpus,
                            host_args=mi.host_kernel_args(**(limits or HOST_LIMITS)))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.next_id = 0

    def connect(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.sock_path.exists():
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU made no agent socket"
            time.sleep(0.01)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.sock_path))
        self.sock.settimeout(timeout)
        self.sock.sendall(b"%d\n" % len(WORKER_SOURCE) + WORKER_SOURCE)
        self.reader = self.sock.makefile("rb")
        ready = self.receive()
        self.boot_seconds = time.monotonic() - self.started
        return ready

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, f"the guest closed the port; console:\n{self.console_text()}"
        return json.loads(line)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def execute(self, code: str) -> tuple[str, list[dict], dict]:
        """Run ``code``; return its stdout, its error messages and the reply."""
        self.next_id += 1
        self.send({"id": self.next_id, "type": "execute", "code": code, "silent": False,
                   "max_output_bytes": None, "cell_name": f"<cell-{self.next_id}>"})
        out, errors = [], []
        while True:
            msg = self.receive()
            if msg.get("type") == "stream" and msg.get("name") == "stdout":
                out.append(msg["text"])
            elif msg.get("type") == "error":
                errors.append(msg)
            elif msg.get("type") == "reply" and msg.get("id") == self.next_id:
                return "".join(out), errors, msg

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if hasattr(self, "sock"):
            self.reader.close()
            self.sock.close()


@pytest.fixture
def boot(artifacts: tuple[Path, dict[str, Any]], tmp_path: Path):
    guests: list[Guest] = []

    def start(**kwargs: Any) -> Guest:
        run_dir = tmp_path / str(len(guests))
        run_dir.mkdir()
        guest = Guest(*artifacts, run_dir, **kwargs)
        guests.append(guest)
        return guest

    yield start
    for guest in guests:
        guest.kill()


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


def test_worker_runs_as_nobody_and_the_vm_exits_after_shutdown(boot) -> None:
    guest = boot()
    ready = guest.connect()
    assert ready["type"] == "ready" and ready["python"].startswith("3.11")
    out, errors, reply = guest.execute(
        "import os; print(os.getuid(), open('/proc/version').read().split()[2])"
    )
    assert not errors, errors
    assert reply["content"]["status"] == "ok"
    assert out.split() == ["65534", guest.manifest["kernel_version"]]
    assert mi.READY_LINE in guest.console_text()
    guest.send({"type": "shutdown"})
    assert guest.proc.wait(timeout=30) == 0, "QEMU should exit on its own"
    assert "worker exited with status 0" in guest.console_text()


def test_memory_is_the_guest_size(boot) -> None:
    guest = boot(memory_mib=256)
    guest.connect()
    try:
        out, errors, _ = guest.execute(
            "b = bytearray(400 * 10**6)\nb[::4096] = b'x' * len(b[::4096])\nprint('allocated')"
        )
    except (AssertionError, OSError):
        return  # the guest's kernel killed the worker, and the VM ended: also stopped
    assert "allocated" not in out
    assert errors and errors[0]["ename"] == "MemoryError", errors


def test_limits_environment_and_filesystems(boot) -> None:
    guest = boot(cpus=2, nproc=64, fsize=1048576, nofile=100, cpu=7)
    guest.connect()
    code = """
import errno, json, os, resource, socket, time
def write(path):
    try:
        open(path, 'w').close(); return 'ok'
    except OSError as e:
        return errno.errorcode[e.errno]
def connect():
    try:
        socket.create_connection(('10.0.2.2', 80), timeout=2); return 'connected'
    except OSError as e:
        return type(e).__name__
def orphan_zombies():
    # A child that forks a grandchild and exits: the grandchild is re-parented to PID 1,
    # which must reap it when it exits.
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            time.sleep(0.2)
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(1)
    stats = []
    for p in filter(str.isdigit, os.listdir('/proc')):
        try:
            stats.append(open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[:2])
        except OSError:
            pass
    return [s for s in stats if s == ['Z', '1']]
r = resource
print(json.dumps({
    'limits': [r.getrlimit(x) for x in (r.RLIMIT_NPROC, r.RLIMIT_FSIZE, r.RLIMIT_NOFILE,
                                        r.RLIMIT_CPU, r.RLIMIT_CORE)],
    'env': dict(os.environ), 'cwd': os.getcwd(), 'cpus': os.cpu_count(),
    'root': write('/x'), 'workspace': write('/workspace/x'), 'tmp': write('/tmp/x'),
    'groups': os.getgroups(), 'gid': os.getgid(),
    'nnp': [l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split()[1],
    'net': connect(), 'ifaces': sorted(os.listdir('/sys/class/net')),
    'zombies': orphan_zombies(),
}))
"""
    out, errors, _ = guest.execute(code)
    assert not errors, errors
    seen = json.loads(out)
    assert seen["limits"] == [[64, 64], [1048576, 1048576], [100, 100], [7, 8], [0, 0]]
    assert seen["env"] == {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/workspace",
                           "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    assert seen["cwd"] == "/workspace" and seen["cpus"] == 2
    assert seen["root"] == "EROFS" and seen["workspace"] == "ok" and seen["tmp"] == "ok"
    assert seen["gid"] == 65534 and seen["groups"] in ([], [65534])
    assert seen["nnp"] == "1"
    assert seen["net"] != "connected" and seen["ifaces"] in ([], ["lo"])
    assert seen["zombies"] == [], "the init left an orphan unreaped"


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
    info = {"initrd": False, "args": mi.SOURCE_KERNEL_ARGS, "acpi": False,
            "firecracker": True, "source": "test", "version": "6.1.0-test"}
    manifest = mi.write_manifest(directory, info, "3.11.2")
    manifest.update(overrides)
    (directory / mi.MANIFEST).write_text(json.dumps(manifest))
    return manifest


def test_manifest_fields(tmp_path: Path) -> None:
    manifest = fake_set(tmp_path)
    assert set(manifest) >= {"kernel", "initrd", "rootfs", "rootfs_type", "kernel_args",
                             "microvm_acpi", "firecracker_capable", "kernel_source",
                             "kernel_version", "python", "built", "format"}
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
        return {"initrd": False, "args": mi.SOURCE_KERNEL_ARGS, "acpi": False,
                "firecracker": True, "source": "stub", "version": f"6.1.0-stub{len(calls)}"}

    def rootfs(tarball: Path, work: Path, image: Path) -> str:
        image.write_bytes(b"ext4")
        return "3.11.2"

    monkeypatch.setattr(mi, "_require_tools", lambda kernel: None)
    monkeypatch.setattr(mi, "_source_kernel", kernel)
    monkeypatch.setattr(mi, "_debootstrap", _stub_tarball)
    monkeypatch.setattr(mi, "_rootfs_image", rootfs)
    return calls


def _stub_tarball(work: Path) -> Path:
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

    def broken(work: Path) -> Path:
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
    for option in ("VIRTIO_MMIO", "VIRTIO_MMIO_CMDLINE_DEVICES", "VIRTIO_BLK",
                   "VIRTIO_CONSOLE", "EXT4_FS", "DEVTMPFS", "TMPFS", "PROC_FS", "SYSFS",
                   "PROC_PAGE_MONITOR", "MULTIUSER", "FUTEX", "EPOLL", "UNIX", "PVH",
                   "SERIAL_8250_CONSOLE", "PRINTK", "MAGIC_SYSRQ", "BINFMT_ELF",
                   "BINFMT_SCRIPT", "SMP", "POSIX_TIMERS", "SHMEM"):
        assert wanted.get(f"CONFIG_{option}") == "y", option
    assert wanted["CONFIG_MODULES"] == "n" and wanted["CONFIG_PCI"] == "n"


def test_config_mismatches() -> None:
    actual = mi.parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n")
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
    status.write_text("Package: python3\nVersion: 3.11.2-1+b1\n\n"
                      "Package: python3.11-minimal\nVersion: 3.11.2-6+deb12u6\n")
    assert mi.python_version(tmp_path) == "3.11.2"


def test_qemu_argv_follows_the_contract(tmp_path: Path) -> None:
    manifest = fake_set(tmp_path)
    argv = mi.qemu_argv(tmp_path, manifest, socket_path=Path("/s"), console=Path("/c"),
                        memory_mib=512, cpus=2, host_args="panic=-1 symbi.nproc=5")
    text = " ".join(argv)
    assert argv[:3] == [QEMU, "-M", "microvm,acpi=off"]
    assert "-m 512 -smp 2" in text and "-no-reboot" in text and "-initrd" not in text
    assert argv[argv.index("-append") + 1] == f"{mi.SOURCE_KERNEL_ARGS} panic=-1 symbi.nproc=5"
    assert f"file={tmp_path / mi.ROOTFS},format=raw,if=none,readonly=on" in text
    assert "virtserialport,chardev=agent,name=symbi.agent" in text
    assert "socket,id=agent,path=/s,server=on,wait=off" in text


def test_host_kernel_args_are_numbers_only() -> None:
    args = mi.host_kernel_args(nproc=10, fsize=2048).split()
    assert "symbi.nproc=10" in args and "symbi.fsize=2048" in args
    assert all(re.fullmatch(r"[\w.]+=[\w.-]+", a) for a in args), args


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
