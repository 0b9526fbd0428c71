"""Interrupts and tracebacks as a notebook's user meets them, through real kernels: an
interrupted ``%%symbi`` cell ends with its output so far, its statistics and one line;
the sandboxed code's tracebacks name the cell, never a host directory, with the line
numbers of the cell as typed, at every tier; the symbi kernel says that an interrupt
kept the session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyter_client.manager import start_new_kernel

from symbi_jupyter import SandboxOrchestrator, SecurityTier
from symbi_jupyter.cli import main

from .helpers import execute_from_cell, need, run_cell

TIMEOUT = 60
RESULT = "application/vnd.symbi.result+json"


def run(kc, code: str) -> tuple[dict, list[dict]]:
    """Execute ``code``; its reply content and its iopub messages."""
    msg_id = execute_from_cell(kc, code)
    return _reply(kc, msg_id), _outputs(kc, msg_id)


def interrupted(km, kc, code: str) -> tuple[dict, list[dict]]:
    """Execute ``code``, interrupt the kernel once the sandbox has printed 'sleeping'
    (the code is running there), and return the reply and every iopub message."""
    msg_id = execute_from_cell(kc, code)
    before = []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] != "status":
            before.append(msg)
        if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
            break
    km.interrupt_kernel()
    return _reply(kc, msg_id), before + _outputs(kc, msg_id)


def _reply(kc, msg_id: str) -> dict:
    reply = kc.get_shell_msg(timeout=TIMEOUT)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=TIMEOUT)
    return reply["content"]


def _outputs(kc, msg_id: str) -> list[dict]:
    outputs = []
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
        if msg["msg_type"] != "status":
            outputs.append(msg)


def stream(outputs: list[dict], name: str) -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def badges(outputs: list[dict]) -> list[tuple[int, dict]]:
    """(position, data) of each display (or update) of a result's statistics."""
    return [
        (i, m["content"]["data"])
        for i, m in enumerate(outputs)
        if m["msg_type"] in ("display_data", "update_display_data")
        and RESULT in m["content"]["data"]
    ]


# ---------------------------------------------------------------------- %%symbi in ipykernel
@pytest.fixture
def ipykernel(workdir: Path):
    """ipykernel with the extension loaded and tier None allowed in ``workdir``."""
    km, kc = start_new_kernel(kernel_name="python3")
    reply, _ = run(
        kc,
        "%load_ext symbi_jupyter\n"
        "%config SandboxOrchestrator.allow_native_execution = True\n"
        f"%config SandboxOrchestrator.working_directory = {str(workdir)!r}",
    )
    assert reply["status"] == "ok", reply
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def test_an_interrupted_cell_ends_with_its_output_its_badge_and_one_line(
    ipykernel, workdir: Path
) -> None:
    km, kc = ipykernel
    cell = "%%symbi --tier none -o r\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    reply, outputs = interrupted(km, kc, cell)
    # One short line, not IPython's traceback into the magic.
    assert reply["status"] == "error" and reply["ename"] == "Interrupted"
    (error,) = [m for m in outputs if m["msg_type"] == "error"]
    (line,) = error["content"]["traceback"]
    assert "Interrupted" in line and "\n" not in line
    # Its output so far, the sandbox's own traceback at line 4 of the cell as typed ...
    assert stream(outputs, "stdout") == "sleeping\n"
    err = stream(outputs, "stderr")
    assert 'File "cell.py", line 4, in <module>' in err and "time.sleep(60)" in err
    # ... naming no host directory, in anything the front end got.
    everything = json.dumps([m["content"] for m in outputs])
    assert str(workdir) not in everything and "magics.py" not in everything
    # and its statistics, after the output and before the line
    found = badges(outputs)
    assert found, "no statistics for the interrupted run"
    where, data = found[-1]
    assert data[RESULT]["interrupted"] == "ended"
    assert data["text/plain"].startswith("[symbi] None (native) · interrupted")
    assert where < outputs.index(error)
    # -o keeps the run so far
    assert stream(run(kc, "print(r.interrupted, r.success)")[1], "stdout") == "ended False\n"


@pytest.mark.parametrize(
    "tier, env",
    [
        ("none", ""),  # the pre-started interpreter
        ("none", "--env A=1"),  # a fresh one
        ("docker", ""),
        ("gvisor", ""),
        ("microvm", ""),  # through the guest's worker
        ("microvm", "--env A=1"),  # a process of its own in the guest
    ],
)
def test_tracebacks_name_the_cell_with_its_lines_as_typed(ip, workdir: Path, tier, env) -> None:
    availability = SandboxOrchestrator().sandbox(tier).availability()
    need(availability.ok, availability.reason, tier=tier)
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    cell = (
        f"%%symbi --tier {tier} {env}\n"  # line 1
        "import warnings\n"
        "def divide(a, b):\n"
        "    return a / b\n"  # line 4
        "warnings.warn('careful')\n"  # line 5
        "divide(1, 0)\n"  # line 6
    )
    _, cap = run_cell(ip, cell)
    err = cap.stderr
    assert 'File "cell.py", line 6, in <module>' in err, err
    assert 'File "cell.py", line 4, in divide' in err and "return a / b" in err
    assert "cell.py:5: UserWarning: careful" in err
    assert str(workdir) not in err and "/workspace" not in err
    _, cap = run_cell(ip, f"%%symbi --tier {tier} {env}\nx = 1\nx = (\n")
    assert 'File "cell.py", line 3' in cap.stderr and "SyntaxError" in cap.stderr
    assert str(workdir) not in cap.stderr


def test_a_shell_cells_messages_name_the_file_not_its_directory(ip, workdir: Path) -> None:
    ip.run_line_magic("config", "SandboxOrchestrator.allow_native_execution = True")
    _, cap = run_cell(ip, "%%symbi --tier none --exec bash\necho one\nno-such-command\n")
    assert cap.stdout.startswith("one\n")
    assert cap.stderr.startswith("cell.sh: line 3: no-such-command")


# ---------------------------------------------------------------------- the symbi kernel
@pytest.fixture
def symbi_kernel(tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch):
    """The symbi kernel at tier None, with a short grace for interrupts."""
    assert main(["install-kernel", "--prefix", str(tmp_path)]) == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("SYMBIONT_ALLOW_NATIVE_EXECUTION", "true")
    monkeypatch.setenv("SYMBIONT_NATIVE_WORKING_DIR", str(workdir))
    monkeypatch.setenv("SYMBI_KERNEL_TIER", "none")
    km, kc = start_new_kernel(kernel_name="symbi")
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def test_an_interrupt_that_kept_the_session_says_so(symbi_kernel) -> None:
    km, kc = symbi_kernel
    run(kc, "kept = 'still here'")
    cell = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    reply, outputs = interrupted(km, kc, cell)
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    ((_, data),) = badges(outputs)
    assert data[RESULT]["interrupted"] == "kept" and data[RESULT]["killed_by"] is None
    assert "interrupted; state kept" in data["text/plain"]
    assert "killed" not in data["text/plain"] + data["text/html"]
    _, outputs = run(kc, "print(kept)")
    assert stream(outputs, "stdout") == "still here\n"


def test_an_interrupted_symbi_cell_in_the_kernel_shows_its_badge_and_one_line(
    symbi_kernel, workdir: Path
) -> None:
    km, kc = symbi_kernel
    cell = "%%symbi --tier none\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    reply, outputs = interrupted(km, kc, cell)
    assert reply["status"] == "error" and reply["ename"] == "Interrupted"
    assert len(reply["traceback"]) == 1
    assert 'File "cell.py", line 4, in <module>' in stream(outputs, "stderr")
    assert str(workdir) not in json.dumps([m["content"] for m in outputs])
    ((_, data),) = badges(outputs)
    assert data[RESULT]["interrupted"] == "ended" and data[RESULT]["tier"] == "None"


def test_an_interrupted_one_shot_raises_at_tier3_too(orch) -> None:
    """The microVM's one-shot run passes the stop button on to its guest's worker;
    like the other tiers it then ends the caller's run (KeyboardInterrupt with the
    run so far), rather than returning as if the cell had failed by itself."""
    import os
    import signal
    import threading

    availability = orch.sandbox(SecurityTier.TIER3).availability()
    need(availability.ok, availability.reason, tier="microvm")
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")

    def stop(stream: str, chunk: bytes) -> None:
        if b"sleeping" in chunk:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as err:
        orch.execute_code(
            SecurityTier.TIER3,
            "import time\nprint('sleeping', flush=True)\ntime.sleep(60)",
            on_output=stop,
        )
    (partial,) = err.value.args
    assert partial.interrupted == "ended" and partial.stdout == "sleeping\n"
    assert 'File "cell.py", line 3, in <module>' in partial.stderr
