"""``symbi-jupyter image build``: the container tiers' sandbox image.

Pulling an image is not possible everywhere, so by default the image is built offline
from Debian packages: ``mmdebstrap`` makes a root filesystem (the ``essential``
variant plus :data:`PACKAGES`), which is imported with ``docker import``. Where a
registry is reachable, or with ``--dockerfile``, it is built from a Dockerfile instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The default image of DockerSandbox.image: a tag of our own, never pulled.
DEFAULT_IMAGE = "symbi-jupyter/sandbox:bookworm"
SUITE = "bookworm"
#: Debian packages on top of the essential set (bash, coreutils, dash, ...).
PACKAGES = ("python3", "procps")
#: What each profile adds to :data:`PACKAGES`. ``minimal`` is the default: the plotting
#: stack makes the image several times larger, which most sandboxes do not need.
#: python3-munkres satisfies python3-fonttools's "python3-scipy | python3-munkres": without
#: it apt takes SciPy, whose Pythran brings gcc, g++ and Boost's headers (1.2 GB in all).
PROFILES: dict[str, tuple[str, ...]] = {
    "minimal": (),
    "scientific": ("python3-numpy", "python3-pandas", "python3-matplotlib", "python3-munkres"),
}
DEFAULT_PROFILE = "minimal"
#: symbi_jupyter/data, two packages up from this file.
DOCKERFILE = Path(__file__).parents[2] / "data" / "Dockerfile"


def profile_packages(profile: str = DEFAULT_PROFILE) -> tuple[str, ...]:
    """The Debian packages of ``profile``'s image, on top of the essential set."""
    try:
        return PACKAGES + PROFILES[profile]
    except KeyError:
        raise ImageError(
            f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}"
        ) from None


def profile_image(profile: str = DEFAULT_PROFILE) -> str:
    """The tag ``image build --profile`` gives ``profile``'s image by default."""
    profile_packages(profile)  # a bad name fails here, with the choices
    return DEFAULT_IMAGE if profile == DEFAULT_PROFILE else f"{DEFAULT_IMAGE}-{profile}"


def image_changes(profile: str = DEFAULT_PROFILE) -> list[str]:
    """``docker import``'s Dockerfile instructions; the labels say what is inside."""
    return [
        "WORKDIR /workspace",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        # matplotlib writes its font cache under $HOME or MPLCONFIGDIR; the sandbox's
        # root filesystem is read-only and /tmp is its writable tmpfs.
        "ENV MPLCONFIGDIR=/tmp/matplotlib",
        f"LABEL org.symbi-jupyter.packages={','.join(profile_packages(profile))}",
        f"LABEL org.symbi-jupyter.profile={profile}",
        'CMD ["python3"]',
    ]


Say = Callable[[str], None]


class ImageError(Exception):
    """The image could not be built; the message says why and what to do."""


class Stages:
    """A one-line progress bar per stage: ``[####------] 2/3 import  (14.1 s)``."""

    def __init__(self, names: list[str], say: Say) -> None:
        self.names, self.say, self.done = names, say, 0
        self.started = time.monotonic()

    def next(self, detail: str = "") -> None:
        self.done += 1
        width = 20
        filled = width * (self.done - 1) // len(self.names)
        bar = "#" * filled + "-" * (width - filled)
        name = self.names[self.done - 1]
        elapsed = time.monotonic() - self.started
        self.say(f"[{bar}] {self.done}/{len(self.names)} {name}  ({elapsed:.1f} s) {detail}")

    def finish(self, detail: str) -> None:
        elapsed = time.monotonic() - self.started
        self.say(f"[{'#' * 20}] done  ({elapsed:.1f} s) {detail}")


def registry_reachable(host: str = "registry-1.docker.io", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def image_present(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_image(
    tag: str = DEFAULT_IMAGE, *, profile: str = DEFAULT_PROFILE, say: Say = print
) -> None:
    import docker

    client = docker.from_env()
    try:
        if image_present(client, tag):
            say(f"image: {tag} present")
            return
    finally:
        client.close()
    build_image(tag, profile=profile, say=say)


def build_image(
    tag: str | None = None,
    *,
    profile: str = DEFAULT_PROFILE,
    dockerfile: Path | None = None,
    offline: bool | None = None,
    say: Say = print,
) -> str:
    """Build ``tag`` (default: :func:`profile_image`) with ``profile``'s packages; returns
    how it was built. ``offline=None`` decides by whether a registry is reachable; a given
    ``dockerfile`` always builds from it."""
    import docker

    packages = profile_packages(profile)
    tag = tag or profile_image(profile)

    client = docker.from_env()
    try:
        if dockerfile is None and offline is None:
            offline = not registry_reachable()
        if dockerfile is not None or not offline:
            return _from_dockerfile(client, tag, dockerfile or DOCKERFILE, profile, say)
        return _offline(client, tag, profile, packages, say)
    finally:
        client.close()


def _offline(client: Any, tag: str, profile: str, packages: tuple[str, ...], say: Say) -> str:
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is needed to build the image offline: apt-get install -y mmdebstrap "
            "(or run symbi-jupyter setup as root)"
        )
    stages = Stages(["rootfs", "import", "check"], say)
    with tempfile.TemporaryDirectory(prefix="symbi-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        stages.next(f"mmdebstrap --variant=essential {SUITE} + {', '.join(packages)}")
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--variant=essential",
                f"--include={','.join(packages)}",
                "--quiet",
                SUITE,
                str(rootfs),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ImageError(f"mmdebstrap failed ({proc.returncode}): {proc.stderr.strip()}")
        stages.next(f"docker import ({rootfs.stat().st_size / 2**20:.0f} MiB)")
        repository, _, version = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
        client.api.import_image_from_file(
            str(rootfs), repository=repository, tag=version, changes=image_changes(profile)
        )
    stages.next("python3 inside")
    version = _check(client, tag, profile)
    stages.finish(f"{tag}: {version}")
    return "offline (mmdebstrap + docker import)"


def _from_dockerfile(client: Any, tag: str, dockerfile: Path, profile: str, say: Say) -> str:
    import docker

    stages = Stages(["build", "check"], say)
    stages.next(f"docker build -f {dockerfile}")
    try:
        client.images.build(
            path=str(dockerfile.parent),
            dockerfile=dockerfile.name,
            tag=tag,
            rm=True,
            buildargs={"PACKAGES": " ".join(PROFILES[profile]), "PROFILE": profile},
        )
    except docker.errors.BuildError as exc:
        raise ImageError(f"docker build failed: {exc}") from None
    stages.next("python3 inside")
    version = _check(client, tag, profile)
    stages.finish(f"{tag}: {version}")
    return f"from {dockerfile}"


#: What ``_check`` runs in a new image: the Python version, and the profile's modules.
_CHECKS = {
    "minimal": "import sys; print('python', sys.version.split()[0])",
    "scientific": "import sys, numpy, pandas, matplotlib; print('python', "
    "sys.version.split()[0] + ', numpy', numpy.__version__ + ', pandas', pandas.__version__ "
    "+ ', matplotlib', matplotlib.__version__)",
}


def _check(client: Any, tag: str, profile: str = DEFAULT_PROFILE) -> str:
    out = client.containers.run(
        tag,
        ["python3", "-c", _CHECKS[profile]],
        remove=True,
        network_mode="none",
        labels={"symbi-jupyter.build-check": "1"},
    )
    return out.decode().strip()


def build_command(tag: str = DEFAULT_IMAGE) -> str:
    """What to run to get the image ``tag``, for error messages: a profile's tag names
    its profile."""
    profile = next((p for p in PROFILES if profile_image(p) == tag), None)
    command = "symbi-jupyter image build"
    if profile is None:  # an image of the operator's: ours under its name, or theirs
        command += f" --tag {tag} (or build or pull that image yourself)"
    elif profile != DEFAULT_PROFILE:
        command += f" --profile {profile}"
    return command + ("" if os.geteuid() == 0 else "  (needs root)")
