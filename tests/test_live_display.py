"""Usage samples taken while code runs: the live line of %%symbi (through a real
kernel, as a front end sees it), and the memory sparkline of the HTML badge."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.render import LiveLine, ResultDisplay, render_html, render_mimebundle
from symbi_jupyter.sampling import UsageSample

from .helpers import NotebookFrontEnd, need

GROWING = (
    "import time\n"
    "b = bytearray(40 * 2**20); b[::4096] = b'x' * len(b[::4096])\n"
    "time.sleep(0.7)\n"
    "c = bytearray(80 * 2**20); c[::4096] = b'x' * len(c[::4096])\n"
    "time.sleep(0.7)\n"
)


def test_a_run_is_sampled_from_outside_while_it_runs(orch) -> None:
    seen: list[UsageSample] = []
    result = orch.execute_code(SecurityTier.NONE, GROWING, on_sample=seen.append)
    assert result.success
    assert len(result.memory_samples) >= 3
    times = [t for t, _ in result.memory_samples]
    assert times == sorted(times)
    memory = [m for _, m in result.memory_samples]
    # it saw the second allocation (a last sample may catch the process exiting)
    assert max(memory) > memory[0] + 60 * 2**20
    assert len(seen) == len(result.memory_samples)
    assert all(s.cpu_seconds is not None for s in seen)


def test_a_short_run_has_no_samples_and_sampling_can_be_off(orch) -> None:
    assert orch.execute_code(SecurityTier.NONE, "pass").memory_samples is None
    orch.sample_interval_seconds = 0
    seen: list[UsageSample] = []
    result = orch.execute_code(
        SecurityTier.NONE, "import time; time.sleep(0.6)", on_sample=seen.append
    )
    assert result.memory_samples is None and seen == []


def test_containers_are_sampled_too(audit_path) -> None:
    from symbi_jupyter.orchestrator import SandboxOrchestrator

    orch = SandboxOrchestrator()
    try:
        availability = orch.sandbox(SecurityTier.TIER1).availability()
        need(availability.ok, availability.reason, tier="docker")
        result = orch.execute_code(SecurityTier.TIER1, GROWING)
        assert result.memory_samples and len(result.memory_samples) >= 3
    finally:
        orch.close()


def test_the_badge_draws_the_samples_as_an_svg_image(orch) -> None:
    result = orch.execute_code(SecurityTier.NONE, GROWING)
    page = render_html(result, ResultDisplay(stable=False))
    (encoded,) = re.findall(
        r'<img class="symbi-sparkline" src="data:image/svg\+xml;base64,([^"]+)"', page
    )
    svg = base64.b64decode(encoded).decode()
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(points) == len(result.memory_samples)
    assert "<script" not in page
    stable = ResultDisplay(stable=True)
    assert "symbi-sparkline" not in render_html(result, stable)
    bundle = render_mimebundle(result, stable)
    assert bundle["application/vnd.symbi.result+json"]["memory_samples"] is None


def test_the_live_line_says_elapsed_memory_and_cpu() -> None:
    sample = UsageSample(2.5, 120 * 2**20, 1.0, 97.4)
    line = LiveLine(SecurityTier.TIER1, ResourceLimits(max_memory_mb=512), sample)
    assert str(line) == (
        "[symbi] Tier1 (docker) · running 2.50 s · memory 120.0 MiB of 512.0 MiB · CPU 97 %"
    )
    assert 'class="symbi-live"' in line._repr_html_()


def _run_notebook(
    cells: list[str], monkeypatch, stable: bool, workdir: Path, front_end=NotebookFrontEnd
):
    """Execute cells in a real python3 kernel (from a notebook front end, or as
    ``front_end=NotebookClient``, like a console, naming no cell); return the notebook
    and every iopub message the kernel sent for them."""
    if stable:
        monkeypatch.setenv("SYMBI_JUPYTER_STABLE_OUTPUT", "1")
    setup = (
        "%load_ext symbi_jupyter\n"
        "%config SandboxOrchestrator.allow_native_execution = True\n"
        f"%config SandboxOrchestrator.working_directory = {str(workdir)!r}"
    )
    nb = new_notebook(cells=[new_code_cell(setup), *(new_code_cell(c) for c in cells)])
    messages: list[dict] = []
    client = front_end(nb, kernel_name="python3", timeout=120)
    original = client.process_message

    def spy(msg, cell, cell_index):
        messages.append(msg)
        return original(msg, cell, cell_index)

    client.process_message = spy
    client.execute()
    return nb, messages


@pytest.mark.parametrize("stable", [False, True], ids=["live", "stable"])
def test_the_live_line_is_replaced_in_place_and_off_when_stable(
    monkeypatch, workdir: Path, stable: bool
) -> None:
    nb, messages = _run_notebook(["%%symbi --tier none\n" + GROWING], monkeypatch, stable, workdir)
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    outputs = nb.cells[1].outputs
    assert len(outputs) == 1  # the final statistics, and nothing else
    final = outputs[0]["data"]
    assert final["text/plain"].startswith("[symbi] None (native) · exit 0")
    if stable:
        assert updates == []  # nbval sees what the notebook holds
        assert all(
            m["msg_type"] != "display_data" or "symbi-live" not in str(m["content"])
            for m in messages
        )
    else:
        live = [m for m in messages if "symbi-live" in str(m["content"])]
        assert live, "a live line was shown while the cell ran"
        assert updates and "symbi-sparkline" in updates[-1]["content"]["data"]["text/html"]


def test_output_after_the_live_line_leaves_no_empty_output(monkeypatch, workdir) -> None:
    """The emptied live line used to stay in the saved notebook as an empty
    display_data: the statistics now take its place."""
    code = "%%symbi --tier none\nimport time\ntime.sleep(0.8)\nprint('late output')"
    nb, messages = _run_notebook([code], monkeypatch, False, workdir)
    outputs = nb.cells[1].outputs
    assert all(o.get("data") != {} and o.get("data", {}).get("text/plain") != "" for o in outputs)
    assert [o["output_type"] for o in outputs] == ["display_data", "stream"]
    assert outputs[0]["data"]["text/plain"].startswith("[symbi] None (native) · exit 0")
    assert outputs[1]["text"] == "late output\n"
    # a front end that prints each display once (jupyter console) has no text to print
    # for the live line, so nothing stale stays on its screen
    [first] = [m for m in messages if m["msg_type"] == "display_data"]
    assert "symbi-live" in first["content"]["data"]["text/html"]
    assert "text/plain" not in first["content"]["data"]


def test_nbformat_round_trip_of_a_result_with_samples(orch, tmp_path: Path) -> None:
    result = orch.execute_code(SecurityTier.NONE, GROWING)
    nb = new_notebook(cells=[new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", data=render_mimebundle(result))]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    nbformat.validate(nbformat.read(path, 4))


def test_a_front_end_naming_no_cell_gets_no_live_line_and_the_statistics(
    monkeypatch, workdir: Path
) -> None:
    """``jupyter console`` (and papermill) name no cell, and a console ignores display
    updates: the statistics that replaced the live line in place never reached it."""
    nb, messages = _run_notebook(
        ["%%symbi --tier none\n" + GROWING], monkeypatch, False, workdir, NotebookClient
    )
    assert [m for m in messages if m["msg_type"] == "update_display_data"] == []
    assert "symbi-live" not in str(messages)
    (final,) = nb.cells[1].outputs
    assert final["output_type"] == "display_data"
    assert final["data"]["text/plain"].startswith("[symbi] None (native) · exit 0")
