"""Test helpers (plain functions, no fixtures): import them from here, not from conftest."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import pytest
from IPython.utils.capture import capture_output
from nbclient import NotebookClient

from symbi_jupyter.sandboxes.identities import RunIdentities

# Set in CI, e.g. SYMBI_REQUIRE_TIERS=none,docker,gvisor: a tier the tests need but
# cannot find is a failure there, a skip (with the reason) on a user's laptop.
REQUIRE_ENV = "SYMBI_REQUIRE_TIERS"


def need(condition: bool, reason: str, tier: str = "none") -> None:
    """Skip with ``reason`` unless the environment demands ``tier``."""
    if condition:
        return
    required = {t.strip() for t in os.environ.get(REQUIRE_ENV, "").split(",") if t.strip()}
    if tier in required or "all" in required:
        pytest.fail(f"{reason} ({REQUIRE_ENV} includes {tier}: a failure, not a skip)")
    pytest.skip(reason)


def is_prestarted(script: str | Path, pid: int | str | None = None) -> bool:
    """Whether ``script`` is the bootstrap a spare's pre-started interpreter waits in
    (tier None), not a run's code. With ``pid``, as that process sees it: as root a
    run's directory is on its own tmpfs, which the host does not see."""
    path = Path(f"/proc/{pid}/root{script}") if pid is not None else Path(script)
    try:
        return path.read_text().startswith("# The bootstrap of a pre-started")
    except (OSError, UnicodeDecodeError):
        return False


def host_dir(path: str | Path) -> str:
    """The volume that lets a tier None run write ``path`` (a directory the test made
    in /tmp) where the host sees it, past the run's private /tmp."""
    return f"{path}:{path}:rw"


def leased(uid: int | str) -> bool:
    """Whether ``uid`` is one of the block sandboxes lease their own host uid from."""
    block = RunIdentities()
    return block.first_uid <= int(uid) < block.first_uid + block.count


def wait_until(predicate, seconds: float = 30.0) -> bool:
    """Poll for an eventual state (clean-up after a process exits); not a timing test."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def run_cell(ip, cell: str):
    """Run ``cell`` in the shell; its result and captured output."""
    with capture_output() as cap:
        result = ip.run_cell(cell)
    return result, cap


def execute_from_cell(kc, code: str, cell_id: str | None = "cell-1", **options) -> str:
    """``kc.execute(code)`` as a notebook front end (JupyterLab, VS Code) sends it,
    naming its cell: the symbi front ends show a live line only to such a front end.
    ``cell_id=None``: as ``jupyter console`` or nbclient send it."""
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
        **options,
    }
    metadata = {"cellId": cell_id} if cell_id else {}
    msg = kc.session.msg("execute_request", content, metadata=metadata)
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


class NotebookFrontEnd(NotebookClient):
    """nbclient, its requests naming their cells as a notebook front end's do."""

    async def async_start_new_kernel_client(self):  # type: ignore[override]
        kc = await super().async_start_new_kernel_client()
        kc.execute = functools.partial(execute_from_cell, kc)
        return kc


def start_kernel(name: str, env: dict[str, str]):
    """``start_new_kernel(name)`` with ``env``, its kernelspec found through
    ``env["JUPYTER_PATH"]`` (which jupyter_client reads from this process)."""
    from jupyter_client.manager import start_new_kernel

    saved = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]
    try:
        return start_new_kernel(kernel_name=name, env=env)
    finally:
        if saved is None:
            del os.environ["JUPYTER_PATH"]
        else:
            os.environ["JUPYTER_PATH"] = saved


def finish(kc, msg_id: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    """The reply content of request ``msg_id`` and its iopub messages until idle."""
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return reply["content"], outputs
        outputs.append(msg)
