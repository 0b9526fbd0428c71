"""IPython's syntax in the symbi kernel: real kernels at every tier (jupyter_client), a
worker run by a Python without IPython, and the host's line-keeping transformation."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from symbi_jupyter.kernel.transform import transform_cell
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.worker import worker_source
from symbi_jupyter.tiers import SecurityTier

from .helpers import need, wait_until
from .test_kernel import refused, run, stdout, symbi_kernel
from .test_worker import Client, stdout_text

TIERS = {"none": SecurityTier.NONE, "docker": SecurityTier.TIER1}
TIERS |= {"gvisor": SecurityTier.TIER2, "microvm": SecurityTier.TIER3}


@pytest.fixture(scope="module", params=list(TIERS))
def kc(request):
    """One symbi kernel per tier for this module's tests (each starts a sandbox), with
    no host configuration and the statistics display off."""
    tier = request.param
    if tier != "none":
        probe = SandboxOrchestrator()
        availability = probe.availability()[TIERS[tier]]
        probe.close()
        need(availability.ok, availability.reason, tier=tier)
    with symbi_kernel(tier, None) as client:
        yield client


def results(outputs: list[dict]) -> list[dict]:
    """The data of the cell's rich outputs, in order."""
    kinds = ("display_data", "execute_result")
    return [m["content"]["data"] for m in outputs if m["msg_type"] in kinds]


# ---------------------------------------------------------------------- at every tier
def test_timeit_prints_ipythons_line(kc) -> None:
    reply, outputs = run(kc, "x = 3\n%timeit -n 100 -r 3 x * 2")
    assert reply["status"] == "ok", reply
    per_loop = r"[\d.e+]+ (ns|\xb5s|ms|s) \xb1 [\d.e+]+ (ns|\xb5s|ms|s)"  # 1e+03: as IPython
    line = rf"{per_loop} per loop \(mean \xb1 std. dev. of 3 runs, 100 loops each\)\n"
    line = r"(The slowest run took [\d.]+ times longer than the fastest\. .+\n)?" + line
    assert re.fullmatch(line, stdout(outputs)), stdout(outputs)
    # as a cell magic: the line is the setup; -o returns the result
    reply, outputs = run(kc, "%%timeit -n 10 -r 2 -o items = list(range(100))\nsorted(items)")
    assert "of 2 runs, 10 loops each" in stdout(outputs)
    (result,) = results(outputs)
    assert result["text/plain"].startswith("<TimeitResult : ")


def test_time_prints_the_times_and_gives_the_value(kc) -> None:
    reply, outputs = run(kc, "%time sum(range(10))")
    assert reply["status"] == "ok", reply
    text = stdout(outputs)
    assert re.fullmatch(r"CPU times: user .+, sys: .+, total: .+\nWall time: .+\n", text), text
    assert results(outputs) == [{"text/plain": "45"}]
    reply, outputs = run(kc, "%%time\ntotal = 0\nfor i in range(5):\n    total += i\ntotal * 2")
    assert stdout(outputs).startswith("CPU times: ") and results(outputs) == [{"text/plain": "20"}]


def test_writefile_then_the_file_is_read(kc) -> None:
    reply, outputs = run(kc, "%%writefile notes.txt\nfirst line\nsecond\n")
    assert reply["status"] == "ok", reply
    assert stdout(outputs) in ("Writing notes.txt\n", "Overwriting notes.txt\n")
    run(kc, "%%writefile -a notes.txt\nthird\n")
    reply, outputs = run(kc, "print(open('notes.txt').read(), end='')")
    assert stdout(outputs) == "first line\nsecond\nthird\n"


def test_shell_commands_run_in_the_sandbox(kc) -> None:
    reply, outputs = run(kc, "import os\nword = 'hi'\n!echo $word {1 + 1}; id -u")
    assert reply["status"] == "ok", reply
    said, uid = stdout(outputs).splitlines()
    assert said == "hi 2"
    _, outputs = run(kc, "print(os.getuid())")
    assert stdout(outputs) == f"{uid}\n"  # the sandbox's user, not the kernel's
    reply, outputs = run(kc, "lines = !printf 'a\\nb\\n'; exit 3\nlines, lines.s, _exit_code")
    assert results(outputs) == [{"text/plain": "(['a', 'b'], 'a b', 3)"}]


def test_help_goes_to_the_pager(kc) -> None:
    run(kc, "def scale(value, factor=2):\n    'Multiply value by factor.'\n    return value")
    reply, _ = run(kc, "len?")
    (page,) = reply["payload"]
    assert page["source"] == "page"
    assert "Return the number of items in a container." in page["data"]["text/plain"]
    reply, _ = run(kc, "scale??")
    text = reply["payload"][0]["data"]["text/plain"]
    assert "Signature: scale(value, factor=2)" in text and "'Multiply value by factor.'" in text
    reply, outputs = run(kc, "no_such_name?")
    assert stdout(outputs) == "Object `no_such_name` not found.\n" and not reply["payload"]


def test_only_plain_text_pages_reach_the_pager(kc) -> None:
    """A cell can reach the worker's shell: what it puts in the reply is filtered."""
    code = (
        "pages = get_ipython()._payload\n"
        "pages += [7, {'source': 'set_next_input', 'text': 'import os'}]\n"
        "pages.append({'source': 'page', 'data': {'text/html': '<script/>', 'text/plain': 'ok'}})\n"
        "pages.append({'source': 'page', 'data': {'text/plain': 'y' * (3 << 20)}})\n"
        "pages.extend([{'source': 'page', 'data': {'text/plain': 'z'}}] * 20)"
    )
    reply, _ = run(kc, code)
    assert reply["status"] == "ok", reply
    first, big, *rest = reply["payload"]
    assert first == {"source": "page", "data": {"text/plain": "ok"}, "start": 0}
    assert len(big["data"]["text/plain"]) == 1 << 20 and len(rest) == 6  # 10 items seen


def test_what_the_sandbox_lacks_fails_in_one_line(kc) -> None:
    reply = refused(kc, "%load_ext autoreload")
    assert reply["ename"] == "UsageError"
    assert reply["traceback"] == [
        "UsageError: %load_ext: not available in the symbi kernel: IPython extensions "
        "need IPython itself, which does not run in the sandbox"
    ]
    _, outputs = run(kc, "%load_ext symbi_jupyter")  # the kernel has its magics built in
    assert "already loaded" in stdout(outputs)
    reply = refused(kc, "%nonesuch 1")
    assert reply["evalue"].startswith("%nonesuch: not available in the symbi kernel: ")
    assert "%timeit" in reply["evalue"] and "%%writefile" in reply["evalue"]
    assert len(reply["traceback"]) == 1
    assert "only inline" in refused(kc, "%matplotlib qt")["evalue"]
    reply = refused(kc, "%pip install nothing-such")
    assert "no network" in reply["evalue"] or "pip is not installed" in reply["evalue"]
    reply = refused(kc, "x = 1\n%symbi_tier docker")
    assert "first lines" in reply["evalue"]
    # a notebook written for ipykernel drives the orchestrator from its cells
    reply = refused(kc, "get_ipython().run_cell_magic('symbi', '--tier none', 'print(1)')")
    assert reply["evalue"].startswith("%%symbi: the kernel's own magics run on the host")
    assert "code in the sandbox cannot call them: put %%symbi on" in reply["evalue"]
    reply = refused(kc, "from symbi_jupyter import SandboxOrchestrator")
    assert reply["ename"] == "ModuleNotFoundError"
    assert "a sandbox does not start sandboxes" in reply["evalue"]
    assert "ipykernel (python3)" in reply["evalue"]


def test_matplotlib_inline_or_its_reason(kc) -> None:
    _, outputs = run(kc, "import importlib.util\nimportlib.util.find_spec('matplotlib') is None")
    if results(outputs) == [{"text/plain": "True"}]:
        reply = refused(kc, "%matplotlib inline")
        assert "matplotlib is not installed in this sandbox" in reply["evalue"]
        assert "image build --profile scientific" in reply["evalue"], "names the command"
        return
    reply, outputs = run(
        kc, "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3])"
    )
    assert reply["status"] == "ok", reply
    assert results(outputs)[-1]["image/png"].startswith("iVBORw0KGgo")  # a PNG, base64


def test_rich_display_and_ipython_display(kc) -> None:
    code = (
        "from IPython.display import HTML, Markdown, display\n"
        "display(HTML('<b>bold</b>'), Markdown('*it*'))\n"
        "class Card:\n"
        "    def _repr_html_(self):\n"
        "        return '<i>card</i>'\n"
        "Card()"
    )
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", reply
    html, markdown, card = results(outputs)
    assert html == {"text/html": "<b>bold</b>", "text/plain": "<IPython.core.display.HTML object>"}
    assert markdown["text/markdown"] == "*it*"
    assert card["text/html"] == "<i>card</i>"


def test_kernel_magics_run_first_and_lines_keep_their_numbers(kc) -> None:
    reply, outputs = run(kc, "%symbi_limits --timeout 30\n%time y = 2\nz = y\n1 / (z - 2)")
    assert "wall 30 s per cell" in stdout(outputs)
    assert reply["ename"] == "ZeroDivisionError"
    assert "line 4, in <module>\n    1 / (z - 2)\n" in "\n".join(reply["traceback"])
    reply = refused(kc, "\n%timeit -n 1 x = (\n")
    assert reply["ename"] == "SyntaxError" and "line 2" in reply["evalue"]
    assert "    %timeit -n 1 x = (" in reply["traceback"]  # the line as typed
    reply = refused(kc, "!true\nprint(1")
    assert reply["ename"] == "SyntaxError" and "line 2" in reply["evalue"]
    assert "wall 300 s" in stdout(run(kc, "%symbi_limits --reset")[1])


# ---------------------------------------------------------------------- the worker alone
@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A worker run by Debian's python3, which has no IPython, as in every image."""
    python = shutil.which("python3", path="/usr/bin")
    need(python is not None, "no /usr/bin/python3")
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_bytes(worker_source())
    client = Client([python, "-I", str(path)])
    yield client
    client.close()


def execute(client: Client, cell: str) -> tuple[list[dict], dict]:
    """A cell as the kernel sends it: transformed, with the text as typed."""
    code = transform_cell(cell)
    return client.execute(code, **({} if code == cell else {"source": cell}))


def test_the_stand_in_ipython_says_what_it_lacks(bare) -> None:
    msgs, reply = execute(bare, "import IPython\nprint(IPython.get_ipython() is get_ipython())")
    assert stdout_text(msgs) == "True\n"
    _, reply = execute(bare, "from IPython.display import YouTubeVideo")
    assert reply["ename"] == "ImportError"
    assert reply["evalue"].startswith("IPython.display.YouTubeVideo is not available in the symbi")
    _, reply = execute(bare, "import IPython.core.interactiveshell")
    assert reply["ename"] == "ModuleNotFoundError"


def test_a_magics_error_points_into_the_cell_as_typed(bare) -> None:
    _, reply = execute(bare, "a = 0\n%time b = 1 / a")
    lines = reply["traceback"]
    assert lines.count("    %time b = 1 / a") == 1  # the call and its code: shown once
    at = lines.index("    %time b = 1 / a")
    assert lines[at - 1].endswith("line 2, in <module>")
    assert lines[at + 1] == " " * len("    %time b = ") + "~~^~~"  # under "1 / a", as typed


def test_an_interrupted_shell_command_is_stopped_with_its_group(bare) -> None:
    cell = "!echo $$; sleep 60 & sleep 60"
    rid = bare.send(type="execute", code=transform_cell(cell), source=cell, silent=False)
    shell = int(bare.next()["text"])  # the shell's pid: its process group's id
    bare.send(type="interrupt")
    msgs, reply = bare.collect(rid)
    assert reply["ename"] == "KeyboardInterrupt" and reply["interrupted"] is True
    assert reply["wall_seconds"] < 60
    assert wait_until(lambda: not _group_alive(shell))  # the shell and both sleeps
    msgs, _ = execute(bare, "!echo next")
    assert stdout_text(msgs) == "next\n"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_matplotlib_figures_come_back_as_png(tmp_path) -> None:
    """Needs a Python with matplotlib: SYMBI_TEST_MATPLOTLIB_PYTHON, else this one's."""
    python = os.environ.get("SYMBI_TEST_MATPLOTLIB_PYTHON", sys.executable)
    client = Client([python, "-I", str(_shipped(tmp_path))])
    try:
        probe = "import importlib.util\nimportlib.util.find_spec('matplotlib') is None"
        msgs, _ = execute(client, probe)
        if msgs[-1]["data"]["text/plain"] == "True":
            pytest.skip(f"matplotlib is not installed for {python}")
        msgs, _ = execute(client, "import matplotlib.pyplot as plt\nplt.plot([1, 2]);")
        (figure,) = [m for m in msgs if m["type"] == "display_data"]
        assert figure["data"]["image/png"].startswith("iVBORw0KGgo")
        assert figure["data"]["text/plain"].startswith("<Figure size")
        msgs, _ = execute(client, "plt.plot([2, 1]); plt.show()\nprint('after')")
        assert [m["type"] for m in msgs] == ["display_data", "stream"]  # shown where called
        msgs, _ = execute(client, "plt.ioff()\nplt.plot([1]);")
        assert not [m for m in msgs if m["type"] == "display_data"]  # until plt.show()
    finally:
        client.close()


def _shipped(directory: Path) -> Path:
    path = directory / "worker.py"
    path.write_bytes(worker_source())
    return path


# ---------------------------------------------------------------------- on the host
@pytest.mark.parametrize(
    "cell",
    [
        "\n\n%timeit x\n1/0",
        "x = 1\n%time a \\\n  + b\nz",
        "y = 1\nfiles = !ls \\\n  -l\nz",
        "  a = 1\n  !ls\n  b",
    ],
)
def test_the_transformation_keeps_every_line_where_it_was(cell: str) -> None:
    code = transform_cell(cell)
    assert code != cell and len(code.splitlines()) == len(cell.splitlines())
    assert code.splitlines()[-1].strip() == cell.splitlines()[-1].strip()


def test_plain_python_is_left_alone() -> None:
    cell = 'doc = """\n>>> not a prompt\n"""'  # IPython would strip the ">>> "
    assert transform_cell(cell) == cell
