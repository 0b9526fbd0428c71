"""Install the symbi kernelspec so Jupyter front ends, nbclient and nbval find it."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..tiers import SecurityTier

DEFAULT_NAME = "symbi"
DISPLAY_NAME = "Python (symbi sandbox)"
#: The kernelspec of a tier is named after it (install-kernel --tier), so a notebook
#: says in its metadata, and Jupyter in its launcher and toolbar, which tier it runs at.
TIER_KERNEL_NAMES = {
    SecurityTier.NONE: "symbi-native",
    SecurityTier.TIER1: "symbi-docker",
    SecurityTier.TIER2: "symbi-gvisor",
    SecurityTier.TIER3: "symbi-microvm",
}


def tier_kernel_name(tier: str) -> str:
    """The kernelspec name of a tier: ``symbi-gvisor`` for ``gvisor`` or ``Tier2``."""
    return TIER_KERNEL_NAMES[SecurityTier.parse(tier)]


#: kernel.json and logos, at the top of the source tree (shared data in the wheel)
SOURCE_DIR = Path(__file__).resolve().parents[2] / "kernelspec"


def kernel_json(tier: str | None = None, allow_native: bool = False) -> dict[str, Any]:
    """The kernelspec for this Python; ``tier`` pins the tier the cells run at, and
    ``allow_native`` switches native execution on for this kernel."""
    spec: dict[str, Any] = {
        "argv": [sys.executable, "-m", "symbi_jupyter.kernel", "-f", "{connection_file}"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
    }
    if tier:
        parsed = SecurityTier.parse(tier)  # ConfigError listing the names if unknown
        spec["display_name"] = f"{DISPLAY_NAME} · {parsed.display_name}"
        spec["env"] = {"SYMBI_KERNEL_TIER": parsed.value}
    if allow_native:
        spec.setdefault("env", {})["SYMBIONT_ALLOW_NATIVE_EXECUTION"] = "true"
    return spec


def install(
    name: str = DEFAULT_NAME,
    *,
    user: bool = False,
    prefix: str | None = None,
    tier: str | None = None,
    allow_native: bool = False,
) -> str:
    """Install the kernelspec; return the directory it went to."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = kernel_json(tier, allow_native)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.mkdir()
        for logo in ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg"):
            source = _logo(logo)
            if source is not None:
                shutil.copy(source, target / logo)
        (target / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        return KernelSpecManager().install_kernel_spec(
            str(target), kernel_name=name, user=user, prefix=prefix
        )


def _logo(name: str) -> Path | None:
    """A logo from the source tree, or from the wheel's installed shared data."""
    for base in (SOURCE_DIR, Path(sys.prefix, "share", "jupyter", "kernels", DEFAULT_NAME)):
        if (base / name).is_file():
            return base / name
    return None
