"""The sandbox worker agent, run as a real process speaking its JSON-lines protocol."""

from __future__ import annotations

import base64
import itertools
import json
import platform
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from symbi_jupyter.sandboxes.worker import worker_source
from symbi_jupyter.sandboxes.worker.agent import BOOTSTRAP, TRUNCATION_MARKER
from symbi_jupyter.sandboxes.worker.shipping import AGENT_MODULES

from .helpers import need

#: What names the agent's own code in a traceback: its modules' file names, shipped
#: (``<symbi-worker/agent.py>``) or not.
OWN_NAMES = ("symbi-worker", *(f"{name}.py" for name in AGENT_MODULES))
TIMEOUT = 60  # generous: only a hang should ever reach it


class Client:
    """Starts a worker and talks to it; ``request`` returns (messages, reply content)."""

    def __init__(self, argv: list[str], source: bytes | None = None) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.ids = itertools.count(1)
        self.messages: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        if source is not None:
            self.write(f"{len(source)}\n".encode() + source)
        self.ready = self.next()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:  # a broken protocol line fails the test that reads it
                self.messages.put({"type": "bad-line", "id": None, "line": line})
        self.messages.put(None)

    def write(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, **msg) -> int:
        msg.setdefault("id", next(self.ids))
        self.write(json.dumps(msg).encode() + b"\n")
        return msg["id"]

    def next(self, timeout: float = TIMEOUT) -> dict:
        msg = self.messages.get(timeout=timeout)
        assert msg is not None, f"worker exited: {self.proc.wait()} {self.proc.stderr.read()!r}"
        return msg

    def collect(self, rid: int) -> tuple[list[dict], dict]:
        msgs = []
        while (msg := self.next())["type"] != "reply" or msg["id"] != rid:
            msgs.append(msg)
        return msgs, msg["content"]

    def request(self, type: str, **fields) -> tuple[list[dict], dict]:
        return self.collect(self.send(type=type, **fields))

    def execute(self, code: str, **fields) -> tuple[list[dict], dict]:
        fields = {"silent": False, "max_output_bytes": None, "cell_name": "<cell>", **fields}
        return self.request("execute", code=code, **fields)

    def start(self, code: str) -> int:
        """Start a cell that prints "go" first; return its id once it is running."""
        fields = {"silent": False, "max_output_bytes": None, "cell_name": "<running>"}
        rid = self.send(type="execute", code=f"print('go', flush=True)\n{code}", **fields)
        assert self.next() == {"id": rid, "type": "stream", "name": "stdout", "text": "go\n"}
        return rid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


def stdout_text(msgs: list[dict], name: str = "stdout") -> str:
    return "".join(m["text"] for m in msgs if m["type"] == "stream" and m["name"] == name)


def names_own_code(text: str) -> bool:
    return any(name in text for name in OWN_NAMES)


@pytest.fixture(scope="module")
def worker_file(tmp_path_factory) -> Path:
    """The shipped program as a file, which tier None runs as ``python3 FILE``."""
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_bytes(worker_source())
    return path


@pytest.fixture
def worker(worker_file):
    client = Client([sys.executable, "-I", str(worker_file)])
    try:
        yield client
    finally:
        client.close()


def test_ready_message(worker):
    ready = worker.ready
    assert ready["type"] == "ready"
    assert ready["protocol"] == 3
    assert ready["pid"] == worker.proc.pid
    assert ready["python"] == platform.python_version()
    assert isinstance(ready["clear_refs"], bool)


def test_started_through_bootstrap():
    client = Client([sys.executable, "-I", "-c", BOOTSTRAP], source=worker_source())
    try:
        assert client.ready["type"] == "ready"
        msgs, reply = client.execute("print(__name__, 6 * 7)")
        assert reply["status"] == "ok"
        assert stdout_text(msgs) == "__main__ 42\n"
        msgs, reply = client.execute("1 / 0", cell_name="<cell-2>")
        assert reply["ename"] == "ZeroDivisionError"
        assert not any(names_own_code(line) for line in reply["traceback"])
    finally:
        client.close()


def test_the_agent_runs_as_modules_of_its_own_from_the_standard_library():
    """No site-packages (``-S``): the shipped program installs the agent's modules as
    the package ``symbi_worker``, with their source at hand for inspection."""
    client = Client([sys.executable, "-I", "-S", "-c", BOOTSTRAP], source=worker_source())
    try:
        code = "import sys\nprint(sorted(n for n in sys.modules if n.startswith('symbi_worker')))"
        msgs, reply = client.execute(code)
        assert reply["status"] == "ok"
        expected = ["symbi_worker", *(f"symbi_worker.{name}" for name in AGENT_MODULES)]
        expected.append("symbi_worker.mpl_inline")  # the matplotlib backend, made at start
        assert stdout_text(msgs) == f"{sorted(expected)}\n"
        _, reply = client.request("inspect", code="display", cursor_pos=7, detail_level=1)
        text = reply["data"]["text/plain"]
        assert "File:      <symbi-worker/agent_output.py>" in text
        assert "def display(self, *objs" in text
    finally:
        client.close()


def test_carets_sit_under_the_failing_code_on_a_cells_last_line(worker):
    """A cell's last line has no newline; traceback places carets as if it had one."""
    _, reply = worker.execute("a = 0\nb = 1 / a")
    at = reply["traceback"].index("    b = 1 / a")
    assert reply["traceback"][at + 1] == "        ~~^~~"


def test_state_persists(worker):
    assert worker.execute("x = 41")[1]["status"] == "ok"
    msgs, reply = worker.execute("print(x + 1)")
    assert reply["status"] == "ok"
    assert [(m["type"], m["name"], m["text"]) for m in msgs] == [("stream", "stdout", "42\n")]


def test_execute_result_and_semicolon(worker):
    msgs, _ = worker.execute("a = 20\na + 22")
    results = [m for m in msgs if m["type"] == "execute_result"]
    assert [r["data"]["text/plain"] for r in results] == ["42"]
    msgs, _ = worker.execute("a + 1;  # hidden")
    assert not [m for m in msgs if m["type"] == "execute_result"]
    msgs, _ = worker.execute("a + 2", silent=True)
    assert not [m for m in msgs if m["type"] == "execute_result"]
    msgs, _ = worker.execute("_, {'b': 1, 'a': 2}")
    (result,) = [m for m in msgs if m["type"] == "execute_result"]
    assert result["data"]["text/plain"] == "(42, {'b': 1, 'a': 2})"


def test_top_level_await(worker):
    code = "import asyncio\nawait asyncio.sleep(0)\nawait asyncio.sleep(0, 7)"
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok"
    assert [m["data"]["text/plain"] for m in msgs if m["type"] == "execute_result"] == ["7"]


def test_display_html(worker):
    code = "class H:\n    def _repr_html_(self):\n        return '<b>hi</b>'\ndisplay(H())\n"
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok"
    (shown,) = [m for m in msgs if m["type"] == "display_data"]
    assert shown["data"]["text/html"] == "<b>hi</b>"
    assert shown["data"]["text/plain"].startswith("<__main__.H object")
    assert shown["transient"] == {}


def test_display_update_by_id(worker):
    msgs, _ = worker.execute("h = display('one', display_id='d1')\nh.update('two')")
    kinds = [(m["type"], m["data"]["text/plain"], m["transient"]) for m in msgs]
    assert kinds == [
        ("display_data", "'one'", {"display_id": "d1"}),
        ("update_display_data", "'two'", {"display_id": "d1"}),
    ]


def test_png_is_base64(worker):
    code = (
        "class P:\n"
        "    def _repr_png_(self):\n"
        "        return b'\\x89PNG\\r\\n\\x1a\\n-data'\n"
        "    def _repr_html_(self):\n"
        "        raise RuntimeError('broken html repr is ignored')\n"
        "P()\n"
    )
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok"
    (result,) = [m for m in msgs if m["type"] == "execute_result"]
    assert base64.b64decode(result["data"]["image/png"]) == b"\x89PNG\r\n\x1a\n-data"
    assert "text/html" not in result["data"]


def test_error_traceback_has_cell_source_and_no_worker_frames(worker):
    code = "def f():\n    raise ValueError('boom')\nf()\n"
    msgs, reply = worker.execute(code, cell_name="<cell-7>")
    (error,) = [m for m in msgs if m["type"] == "error"]
    assert reply["status"] == "error"
    assert (error["ename"], error["evalue"]) == ("ValueError", "boom")
    assert reply["ename"] == "ValueError" and reply["traceback"] == error["traceback"]
    text = "\n".join(error["traceback"])
    assert "raise ValueError('boom')" in text
    assert '"<cell-7>", line 3' in text
    assert not names_own_code(text)


def test_syntax_error(worker):
    _, reply = worker.execute("x = = 1", cell_name="<cell-2>")
    assert reply["status"] == "error"
    assert reply["ename"] == "SyntaxError"
    text = "\n".join(reply["traceback"])
    assert "x = = 1" in text and "^" in text
    assert not names_own_code(text) and "ast.py" not in text


def test_system_exit_does_not_kill_worker(worker):
    _, reply = worker.execute("y = 5\nimport sys\nsys.exit(3)")
    assert (reply["status"], reply["ename"], reply["evalue"]) == ("error", "SystemExit", "3")
    msgs, reply = worker.execute("print(y)")
    assert reply["status"] == "ok" and stdout_text(msgs) == "5\n"
    assert worker.proc.poll() is None


def test_child_process_output_is_captured(worker):
    code = (
        "import os, subprocess\n"
        "os.system('echo from-child')\n"
        "subprocess.run(['sh', '-c', 'echo child-err >&2'])\n"
        "os.write(1, 'é'.encode()[:1]); os.write(1, 'é'.encode()[1:] + b'\\n');\n"
    )
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok"
    assert stdout_text(msgs) == "from-child\né\n"
    assert stdout_text(msgs, "stderr") == "child-err\n"
    assert reply["stdout_bytes"] == len("from-child\né\n".encode())


def test_print_and_display_keep_their_order(worker):
    msgs, _ = worker.execute("print('a', end='')\ndisplay(1)\nprint('b')\ndisplay(2)")
    seq = [m.get("text") or m["data"]["text/plain"] for m in msgs]
    assert seq == ["a", "1", "b\n", "2"]


def test_output_cap(worker):
    code = "print('x' * 5000)\nimport os\nos.system('printf %3000s | tr \" \" y >&2')"
    msgs, reply = worker.execute(code, max_output_bytes=1000)
    out, err = stdout_text(msgs), stdout_text(msgs, "stderr")
    marker = TRUNCATION_MARKER.format(1000)
    assert out == "x" * 1000 + marker
    assert err == "y" * 1000 + marker
    assert reply["stdout_truncated"] and reply["stderr_truncated"]
    assert (reply["stdout_bytes"], reply["stderr_bytes"]) == (5001, 3000)
    msgs, reply = worker.execute("print('small')", max_output_bytes=1000)
    assert stdout_text(msgs) == "small\n" and not reply["stdout_truncated"]


def test_interrupt_sleep(worker):
    worker.execute("state = 'kept'")
    rid = worker.start("import time\ntime.sleep(60)")
    worker.send(type="interrupt", id=None)
    msgs, reply = worker.collect(rid)
    assert reply["status"] == "error"
    assert reply["ename"] == "KeyboardInterrupt" and reply["interrupted"] is True
    assert [m["ename"] for m in msgs if m["type"] == "error"] == ["KeyboardInterrupt"]
    assert reply["wall_seconds"] < 60
    msgs, reply = worker.execute("print(state)")
    assert stdout_text(msgs) == "kept\n" and reply["interrupted"] is False


def test_interrupt_when_idle_is_ignored(worker):
    worker.send(type="interrupt")
    msgs, reply = worker.execute("import time; time.sleep(0.2); print('done')")
    assert reply["status"] == "ok" and stdout_text(msgs) == "done\n"


def test_complete(worker):
    worker.execute("import os")
    code = "x = os.pa"
    _, reply = worker.request("complete", code=code, cursor_pos=len(code))
    assert reply["status"] == "ok"
    assert "os.path" in reply["matches"]
    assert (reply["cursor_start"], reply["cursor_end"]) == (4, len(code))
    _, reply = worker.request("complete", code="pri", cursor_pos=3)
    assert "print" in reply["matches"]


def test_inspect(worker):
    _, reply = worker.request("inspect", code="len(", cursor_pos=4, detail_level=0)
    assert reply["found"] is True
    assert "Return the number of items" in reply["data"]["text/plain"]
    _, reply = worker.request("inspect", code="no_such_name", cursor_pos=5, detail_level=0)
    assert reply["found"] is False


@pytest.mark.parametrize(
    ("code", "status", "indent"),
    [
        ("x = 1", "complete", None),
        ("for i in range(3):", "incomplete", "    "),
        ("for i in range(3):\n    print(i)", "incomplete", "    "),
        ("x = (1,", "incomplete", ""),
        ("x = = 1", "invalid", None),
    ],
)
def test_is_complete(worker, code, status, indent):
    _, reply = worker.request("is_complete", code=code)
    assert reply["status"] == status
    assert reply.get("indent") == indent


def test_usage(worker):
    _, reply = worker.request("usage")
    assert reply["memory_bytes"] > 1_000_000
    assert reply["peak_memory_bytes"] >= reply["memory_bytes"]
    assert reply["cpu_seconds"] > 0


def test_usage_answers_while_a_cell_runs(worker):
    rid = worker.start("import time\ntime.sleep(60)")
    _, usage = worker.request("usage")
    assert usage["memory_bytes"] > 0
    worker.send(type="interrupt")
    assert worker.collect(rid)[1]["interrupted"] is True


def test_per_cell_peak_memory(worker):
    need(worker.ready["clear_refs"], "/proc/self/clear_refs is not writable here: no per-cell peak")
    _, big = worker.execute(
        "b = bytearray(200 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\ndel b"
    )
    _, small = worker.execute("s = 1")
    assert big["memory_method"] == small["memory_method"] == "worker-hwm"
    assert big["peak_memory_bytes"] > 200 * 1024 * 1024
    assert small["peak_memory_bytes"] < 100 * 1024 * 1024


def test_cell_classes_pickle_and_dataclasses_work(worker):
    code = (
        "import pickle, dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Point:\n"
        "    x: int\n"
        "print(pickle.loads(pickle.dumps(Point(3))), __name__)\n"
    )
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok", reply.get("traceback")
    assert stdout_text(msgs) == "Point(x=3) __main__\n"


def test_stdin_is_not_available(worker):
    for code in ("input('name? ')", "import sys; sys.stdin.read()"):
        _, reply = worker.execute(code)
        assert reply["status"] == "error"
        assert reply["ename"] == "StdinNotImplementedError"
        assert "stdin is not available in the symbi sandbox" in reply["evalue"]


def test_unknown_request_type(worker):
    _, reply = worker.request("frobnicate")
    assert reply["status"] == "error" and reply["ename"] == "ProtocolError"
    assert worker.execute("1")[1]["status"] == "ok"


def test_eof_exits(worker):
    worker.proc.stdin.close()
    assert worker.proc.wait(timeout=TIMEOUT) == 0


def test_eof_exits_while_a_cell_runs(worker):
    worker.start("import time\ntime.sleep(60)")
    worker.proc.stdin.close()
    assert worker.proc.wait(timeout=TIMEOUT) == 0


def test_shutdown(worker):
    worker.send(type="shutdown", id=None)
    assert worker.proc.wait(timeout=TIMEOUT) == 0
    assert worker.messages.get(timeout=TIMEOUT) is None  # nothing after shutdown


def test_cpu_accounting(worker):
    _, reply = worker.execute("n = 0\nfor i in range(3_000_000): n += i")
    assert reply["cpu_user_seconds"] > 0
    assert reply["wall_seconds"] > 0
    assert reply["cpu_system_seconds"] >= 0


def test_output_of_a_background_thread_goes_to_the_next_cell(worker, tmp_path):
    go = tmp_path / "go"
    code = (
        "import os, threading, time\n"
        "def late():\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.01)\n"
        "    print('late')\n"
        "threading.Thread(target=late).start()\n"
    )
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok" and msgs == []
    go.touch()  # only now, with the worker idle, does the thread print
    time.sleep(0.5)
    # Nothing is sent for a cell that has replied: the host would take it for a
    # protocol violation. The next cell brings it.
    msgs, reply = worker.execute("print('next')")
    assert reply["status"] == "ok"
    assert stdout_text(msgs) == "late\nnext\n" and {m["id"] for m in msgs} == {2}


def test_output_of_a_forked_child_is_captured(worker):
    code = (
        "import multiprocessing\n"
        "p = multiprocessing.get_context('fork').Process(target=print, args=('from-fork',))\n"
        "p.start(); p.join()\n"
        "p.exitcode"
    )
    msgs, reply = worker.execute(code)
    assert reply["status"] == "ok"
    assert stdout_text(msgs) == "from-fork\n"
    assert [m["data"]["text/plain"] for m in msgs if m["type"] == "execute_result"] == ["0"]


def test_interrupt_during_heavy_output_keeps_the_protocol_intact(worker):
    rid = worker.start("while True:\n    print('y' * 300)")
    assert worker.next()["text"] == "y" * 300 + "\n"  # output is flowing
    worker.send(type="interrupt")
    msgs, reply = worker.collect(rid)  # a broken line would show up as a "bad-line"
    assert reply["interrupted"] is True
    assert {m["type"] for m in msgs} <= {"stream", "error"}
    assert [m["ename"] for m in msgs if m["type"] == "error"] == ["KeyboardInterrupt"]
    assert set(stdout_text(msgs).replace("\n", "")) <= {"y"}
    assert not [line for line in reply["traceback"] if names_own_code(line)]


def test_interrupt_top_level_await(worker):
    worker.execute("import asyncio\nasync def nap():\n    await asyncio.sleep(60)")
    rid = worker.start("await nap()")
    worker.send(type="interrupt")
    assert worker.collect(rid)[1]["ename"] == "KeyboardInterrupt"
    msgs, _ = worker.execute("await asyncio.sleep(0, 'loop still works')")
    assert [m["data"]["text/plain"] for m in msgs] == ["'loop still works'"]


def test_interrupt_is_not_lost_on_the_way_into_a_blocking_call(worker):
    for _ in range(10):
        rid = worker.start("import time\ntime.sleep(60)")
        worker.request("usage")  # the main thread moves on towards the sleep meanwhile
        worker.send(type="interrupt")
        assert worker.collect(rid)[1]["ename"] == "KeyboardInterrupt"


def test_a_cell_that_handles_the_interrupt_is_not_interrupted_again(worker):
    code = (
        "import time\n"
        "try:\n"
        "    print('inside', flush=True)\n"
        "    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        "    time.sleep(1)  # cleaning up\n"
        "    print('cleaned up')\n"
    )
    rid = worker.start(code)
    assert worker.next()["text"] == "inside\n"
    worker.send(type="interrupt")
    msgs, reply = worker.collect(rid)
    assert reply["status"] == "ok"
    assert stdout_text(msgs) == "cleaned up\n"


def test_raw_display_and_clear_output(worker):
    code = "display({'text/plain': 'raw', 'image/png': b'\\x89PNG'}, raw=True)\n"
    msgs, reply = worker.execute(code + "clear_output(wait=True)")
    assert reply["status"] == "ok"
    shown, cleared = msgs
    assert shown["data"] == {"text/plain": "raw", "image/png": "iVBORw=="}
    assert cleared == {"id": shown["id"], "type": "clear_output", "wait": True}
