"""The scientific profile (``image build --profile scientific``): real symbi kernels at
Tier1, Tier2 and Tier3 configured with its image and guest draw matplotlib figures
inline as PNG images, and have numpy and pandas."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.microvm import MicroVMSandbox, default_artifacts_dir
from symbi_jupyter.setup.images.container import (
    DEFAULT_IMAGE,
    ImageError,
    build_command,
    profile_image,
    profile_packages,
)
from symbi_jupyter.setup.images.microvm import MicroVMImageError, build_artifacts
from symbi_jupyter.tiers import SecurityTier

from .helpers import need
from .test_kernel import run, stdout, symbi_kernel

TIERS = {"docker": SecurityTier.TIER1, "gvisor": SecurityTier.TIER2}
TIERS |= {"microvm": SecurityTier.TIER3}
IMAGE = profile_image("scientific")
GUEST = default_artifacts_dir("scientific")
#: The operator's choice of the scientific variant: two traits, in jupyter_symbi_config.
CONFIG = {"DockerSandbox": {"image": IMAGE}, "MicroVMSandbox": {"artifacts_dir": str(GUEST)}}
BUILD = "symbi-jupyter image build --profile scientific"


@pytest.fixture(scope="module", params=list(TIERS))
def kc(request):
    """One symbi kernel per tier, configured with the scientific image and guest."""
    tier = request.param
    probe = SandboxOrchestrator(config=_traitlets_config())
    availability = probe.availability()[TIERS[tier]]
    probe.close()
    build = BUILD + (" --tier3" if tier == "microvm" else "")
    need(availability.ok, f"{availability.reason} (the scientific variant: {build})", tier=tier)
    with symbi_kernel(tier, CONFIG) as client:
        yield client


def _traitlets_config():
    from traitlets.config import Config

    return Config(CONFIG)


def _pngs(outputs: list[dict]) -> list[bytes]:
    return [
        base64.b64decode(m["content"]["data"]["image/png"])
        for m in outputs
        if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]
    ]


def test_plot_shows_one_png_inline(kc) -> None:
    reply, outputs = run(
        kc, "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);", 120
    )
    assert reply["status"] == "ok", reply
    (png,) = _pngs(outputs)
    # A PNG: its signature, then the IHDR chunk with the figure's size in pixels.
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100, (width, height)
    assert png.endswith(b"IEND\xaeB`\x82")
    # Nothing on stderr: no font-cache warning about an unwritable config directory.
    errors = [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"]
    assert not [e for e in errors if "Matplotlib" in e], errors


def test_numpy_and_pandas(kc) -> None:
    code = (
        "import numpy as np, pandas as pd\n"
        "frame = pd.DataFrame({'x': np.arange(4)})\n"
        "print(frame['x'].sum(), np.linalg.norm([3.0, 4.0]))"
    )
    reply, outputs = run(kc, code, 120)
    assert reply["status"] == "ok", reply
    assert stdout(outputs) == "6 5.0\n"


def test_tiers_name_the_variant_in_use(kc, request) -> None:
    reply, outputs = run(kc, "%symbi_tiers")
    assert reply["status"] == "ok", reply
    (table,) = [m["content"]["data"]["text/plain"] for m in outputs if "data" in m["content"]]
    # The image's label, or the guest's manifest, names the profile it was built with.
    if request.node.callspec.params["kc"] == "microvm":
        assert f"guest: {GUEST} (profile scientific)" in table, table
    else:
        assert f"image: {IMAGE} (profile scientific)" in table, table


def test_an_unknown_profile_is_refused_with_the_choices() -> None:
    with pytest.raises(ImageError, match="unknown profile 'big': choose one of minimal, sci"):
        profile_image("big")
    with pytest.raises(MicroVMImageError, match="unknown profile 'big'"):
        build_artifacts(Path("/nonexistent"), profile="big")
    out = subprocess.run(
        [sys.executable, "-m", "symbi_jupyter.cli", "image", "build", "--profile", "big"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "invalid choice: 'big'" in out.stderr


def test_the_default_stays_minimal() -> None:
    assert profile_image() == DEFAULT_IMAGE and profile_packages() == ("python3", "procps")
    assert default_artifacts_dir().name == "microvm" and GUEST.name == "microvm-scientific"
    help_text = " ".join(cli_help("image", "build").split())
    assert (
        "scientific: plus Debian's python3-numpy, python3-pandas, python3-matplotlib" in help_text
    )
    assert "--scientific" in cli_help("setup")


def test_a_missing_variant_names_its_build_command() -> None:
    root = "" if os.geteuid() == 0 else "  (needs root)"
    assert build_command() == "symbi-jupyter image build" + root
    assert build_command(IMAGE) == "symbi-jupyter image build --profile scientific" + root
    assert "--tag my/own:1 (or build or pull" in build_command("my/own:1")
    missing = MicroVMSandbox(artifacts_dir=str(GUEST.with_name("nothing-here")))
    assert "image build --tier3 (as root" in missing.availability().reason
    if not (GUEST / "manifest.json").exists():
        reason = MicroVMSandbox(artifacts_dir=str(GUEST)).availability().reason
        assert "image build --tier3 --profile scientific" in reason


def cli_help(*command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "symbi_jupyter.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
