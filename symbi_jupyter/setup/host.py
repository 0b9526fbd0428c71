"""``symbi-jupyter setup``: install and start what the sandbox tiers need.

On Debian or Ubuntu, as root: Debian's ``docker.io``, ``runsc`` and ``mmdebstrap``;
a Docker daemon with runsc registered as a runtime (``--network=none``: runsc will
not start with the host network here); the sandbox image. For Tier3, QEMU and what
building the microVM guest needs (kernel source and toolchain), then the guest
artefacts (:mod:`symbi_jupyter.setup.images.microvm`). Idempotent: what is there is reused,
a daemon we did not start is never restarted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

APT_PACKAGES = ("docker.io", "runsc", "mmdebstrap")
#: Tier3: the VMM, and what `image build --tier3` needs (see images.microvm).
TIER3_APT_PACKAGES = ("qemu-system-x86",)
DAEMON_CONFIG = Path("/etc/docker/daemon.json")
DOCKER_SOCKET = Path("/var/run/docker.sock")
OUR_PIDFILE = Path("/var/run/symbi-jupyter-dockerd.pid")
OUR_LOG = Path("/var/log/symbi-jupyter-dockerd.log")
RUNSC_RUNTIME = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}

Say = Callable[[str], None]


class SetupError(Exception):
    """Setup cannot go on; the message says what to do."""


def setup(
    *, build_image: bool = True, tier3: bool = True, scientific: bool = False, say: Say = print
) -> None:
    """Install, start and check everything the container tiers need; with ``tier3``,
    also QEMU and the microVM artefacts; with ``scientific``, also the scientific
    profile's image (and guest, with ``tier3``) beside the default ones."""
    if os.geteuid() != 0:
        raise SetupError(
            "symbi-jupyter setup installs Debian packages and starts the Docker daemon, so "
            "it needs root. Run: sudo "
            + " ".join([sys.executable, "-m", "symbi_jupyter.cli", "setup"])
            + f"\nor do it by hand: apt-get install -y {' '.join(APT_PACKAGES)}, register "
            "runsc in /etc/docker/daemon.json as "
            + json.dumps({"runtimes": {"runsc": RUNSC_RUNTIME}})
            + ", restart dockerd, then run: symbi-jupyter image build"
        )
    install_packages(say, APT_PACKAGES + (tier3_packages() if tier3 else ()))
    ensure_runtime_config(say)
    ensure_daemon(say)
    if build_image:
        from .images.container import ensure_image, profile_image

        ensure_image(say=say)
        if scientific:
            ensure_image(profile_image("scientific"), profile="scientific", say=say)
    if tier3:
        ensure_tier3(say)
        if scientific:
            ensure_tier3(say, profile="scientific")
    say("setup: done; `symbi-jupyter doctor` shows what each tier can do here")
    if not scientific:
        say(
            "setup: numpy, pandas and matplotlib in the sandbox: symbi-jupyter setup "
            "--scientific (or image build --profile scientific, and --tier3 --profile "
            "scientific), then set DockerSandbox.image and MicroVMSandbox.artifacts_dir "
            "(see README, 'Plotting')"
        )


def tier3_packages() -> tuple[str, ...]:
    from .images.microvm import BUILD_APT_PACKAGES

    return TIER3_APT_PACKAGES + tuple(p for p in BUILD_APT_PACKAGES if p not in APT_PACKAGES)


def ensure_tier3(say: Say, profile: str = "minimal") -> None:
    """Build ``profile``'s microVM artefacts unless a current set is there (the kernel
    build is cached, so a rebuild after an upgrade of this package takes about half a
    minute)."""
    from .images.microvm import MicroVMImageError, ensure_artifacts

    try:
        ensure_artifacts(profile=profile, say=say)
    except MicroVMImageError as exc:
        raise SetupError(f"microVM artefacts: {exc}") from None


def install_packages(say: Say, packages: tuple[str, ...] = APT_PACKAGES) -> None:
    missing = [p for p in packages if not _dpkg_installed(p)]
    if not missing:
        say(f"packages: {', '.join(packages)} already installed")
        return
    if not shutil.which("apt-get"):
        raise SetupError(
            f"no apt-get here: install {', '.join(missing)} with this system's package "
            "manager, then run symbi-jupyter setup again"
        )
    say(f"packages: installing {', '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-qq"], env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def ensure_runtime_config(say: Say) -> bool:
    """Register runsc in daemon.json (merging with what is there). Returns whether the
    file changed."""
    config = {}
    if DAEMON_CONFIG.exists():
        try:
            config = json.loads(DAEMON_CONFIG.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise SetupError(f"{DAEMON_CONFIG} is not valid JSON ({exc}); fix it first") from None
    runtimes = config.setdefault("runtimes", {})
    if runtimes.get("runsc") == RUNSC_RUNTIME:
        say(f"runtime: runsc already registered in {DAEMON_CONFIG}")
        return False
    runtimes["runsc"] = RUNSC_RUNTIME
    DAEMON_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    DAEMON_CONFIG.write_text(json.dumps(config, indent=2) + "\n")
    say(f"runtime: registered runsc (--network=none) in {DAEMON_CONFIG}")
    return True


def daemon_runtimes() -> list[str] | None:
    """Runtimes the local daemon reports, or None if no daemon answers."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return sorted(client.info().get("Runtimes", {}))
        finally:
            client.close()
    except Exception:  # any failure to reach a daemon means "none answers"
        return None


def ensure_daemon(say: Say) -> None:
    runtimes = daemon_runtimes()
    if runtimes is not None and "runsc" in runtimes:
        say(f"daemon: running, runtimes {', '.join(runtimes)}")
        return
    if runtimes is not None:
        if not _ours_running():
            raise SetupError(
                "a Docker daemon is running without the runsc runtime, and it was not "
                f"started by symbi-jupyter; restart it so it reads {DAEMON_CONFIG} "
                "(e.g. systemctl restart docker)"
            )
        say("daemon: restarting ours so it reads the runtime configuration")
        _stop_ours()
    if _systemd_running() and shutil.which("systemctl"):
        say("daemon: starting docker.service (systemd)")
        _run(["systemctl", "restart", "docker"])
    else:
        say(f"daemon: starting dockerd (log: {OUR_LOG})")
        _start_ours()
    _wait_for_daemon(say)


def _wait_for_daemon(say: Say, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        runtimes = daemon_runtimes()
        if runtimes is not None:
            if "runsc" not in runtimes:
                raise SetupError(f"dockerd started but does not list runsc; check {DAEMON_CONFIG}")
            say(f"daemon: ready, runtimes {', '.join(runtimes)}")
            return
        time.sleep(0.5)
    raise SetupError(f"dockerd did not answer within {seconds:.0f} s; see {OUR_LOG}")


def _start_ours() -> None:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise SetupError("dockerd not found; apt-get install -y docker.io")
    OUR_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(OUR_LOG, "ab") as log:
        subprocess.Popen(
            [
                dockerd,
                "--host",
                f"unix://{DOCKER_SOCKET}",
                "--pidfile",
                str(OUR_PIDFILE),
                "--config-file",
                str(DAEMON_CONFIG),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives this command, as a service would
        )


def _ours_running() -> bool:
    try:
        pid = int(OUR_PIDFILE.read_text())
    except (OSError, ValueError):
        return False
    return Path(f"/proc/{pid}").exists()


def _stop_ours() -> None:
    pid = int(OUR_PIDFILE.read_text())
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _dpkg_installed(package: str, admindir: str | None = None) -> bool:
    """Whether dpkg has ``package`` installed (``admindir``: another dpkg database)."""
    if not shutil.which("dpkg-query"):
        return False
    where = [f"--admindir={admindir}"] if admindir else []
    out = subprocess.run(
        ["dpkg-query", *where, "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    # The last word alone would take "unknown ok not-installed" (a package apt knows
    # of but never installed) for an installed one.
    return out.returncode == 0 and out.stdout.split()[-1:] == ["installed"]


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
