"""The README's first command, ``bash scripts/tour.sh``, run for real."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_tour_runs_and_its_kernel_listens_on_no_port() -> None:
    """The tour executes the tour notebook headless. Its kernel's channels are unix
    sockets in a private directory: ipykernel's warning that a kernel "is running over
    TCP without encryption" (any local user could connect) is gone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    done = subprocess.run(
        ["bash", "scripts/tour.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "without encryption" not in output
    assert (ROOT / "out" / "00-tour.html").stat().st_size > 0
