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
#: symbi_jupyter/data, two packages up from this file.
DOCKERFILE = Path(__file__).parents[2] / "data" / "Dockerfile"
IMAGE_CHANGES = (
    "WORKDIR /workspace",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    f"LABEL org.symbi-jupyter.packages={','.join(PACKAGES)}",
    'CMD ["python3"]',
)

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


def ensure_image(tag: str = DEFAULT_IMAGE, *, say: Say = print) -> None:
    import docker

    client = docker.from_env()
    try:
        if image_present(client, tag):
            say(f"image: {tag} present")
            return
    finally:
        client.close()
    build_image(tag, say=say)


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    dockerfile: Path | None = None,
    offline: bool | None = None,
    say: Say = print,
) -> str:
    """Build ``tag``; returns how it was built. ``offline=None`` decides by whether a
    registry is reachable; a given ``dockerfile`` always builds from it."""
    import docker

    client = docker.from_env()
    try:
        if dockerfile is None and offline is None:
            offline = not registry_reachable()
        if dockerfile is not None or not offline:
            return _from_dockerfile(client, tag, dockerfile or DOCKERFILE, say)
        return _offline(client, tag, say)
    finally:
        client.close()


def _offline(client: Any, tag: str, say: Say) -> str:
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is needed to build the image offline: apt-get install -y mmdebstrap "
            "(or run symbi-jupyter setup as root)"
        )
    stages = Stages(["rootfs", "import", "check"], say)
    with tempfile.TemporaryDirectory(prefix="symbi-image-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        stages.next(f"mmdebstrap --variant=essential {SUITE} + {', '.join(PACKAGES)}")
        proc = subprocess.run(
            [
                "mmdebstrap",
                "--variant=essential",
                f"--include={','.join(PACKAGES)}",
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
            str(rootfs), repository=repository, tag=version, changes=list(IMAGE_CHANGES)
        )
    stages.next("python3 inside")
    version = _check(client, tag)
    stages.finish(f"{tag}: {version}")
    return "offline (mmdebstrap + docker import)"


def _from_dockerfile(client: Any, tag: str, dockerfile: Path, say: Say) -> str:
    import docker

    stages = Stages(["build", "check"], say)
    stages.next(f"docker build -f {dockerfile}")
    try:
        client.images.build(
            path=str(dockerfile.parent), dockerfile=dockerfile.name, tag=tag, rm=True
        )
    except docker.errors.BuildError as exc:
        raise ImageError(f"docker build failed: {exc}") from None
    stages.next("python3 inside")
    version = _check(client, tag)
    stages.finish(f"{tag}: {version}")
    return f"from {dockerfile}"


def _check(client: Any, tag: str) -> str:
    out = client.containers.run(
        tag,
        ["python3", "-c", "import sys; print(sys.version.split()[0])"],
        remove=True,
        network_mode="none",
        labels={"symbi-jupyter.build-check": "1"},
    )
    return "python " + out.decode().strip()


def build_command() -> str:
    """What to run to get the default image, for error messages."""
    return "symbi-jupyter image build" + ("" if os.geteuid() == 0 else "  (needs root)")
