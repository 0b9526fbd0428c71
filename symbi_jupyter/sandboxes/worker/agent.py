"""The worker agent: one persistent Python namespace that runs cells on request.

Stdlib only, Python 3.11: it is shipped as source into containers and guests that have
nothing but Debian's python3. Five modules: this one (the protocol loop and the
running of cells), :mod:`.agent_output` (the cell's streams and the display API),
:mod:`.agent_code` (compiling cells, completion, inspection, rich representation),
:mod:`.agent_magics` (``get_ipython()``: the magics, ``!cmd`` and ``?`` that IPython's
syntax becomes) and :mod:`.agent_display` (a stand-in ``IPython.display``, inline
matplotlib figures).
:func:`.shipping.worker_source` ships them as one program that installs them as modules
and calls :func:`main`; it reaches the sandbox through ``BOOTSTRAP`` (a length line,
then the program, on fd 0) or, at tier None, as the file ``python3`` runs.

Protocol: JSON lines (``ensure_ascii``, compact separators) on the worker's own stdin
(requests) and stdout (messages); nothing else is written there. Never pickle.

Host -> worker, each with an integer ``id`` except the last two:
  execute {code, silent, max_output_bytes, cell_name, source, network} (``code`` as
  IPython's input transformations left it, ``source`` as typed, with the same line
  numbers; ``network``: whether the worker's limits give it the network, for ``%pip``);
  complete {code, cursor_pos};
  inspect {code, cursor_pos, detail_level}; is_complete {code};
  usage (answered at once, even while a cell runs); interrupt (KeyboardInterrupt in the
  running cell, ignored when idle); shutdown (exit 0; EOF on stdin likewise).
Worker -> host: ``{"type":"ready","protocol":PROTOCOL,"pid","python","clear_refs"}``
once; then for a request N any of ``stream``, ``display_data``, ``update_display_data``,
``clear_output``, ``execute_result``, ``error`` with ``"id":N``, and exactly one final
``{"id":N,"type":"reply","content":{...}}`` (an execute reply's content may carry
ipykernel's ``payload``: help for the pager).

Output: fd 0 is /dev/null, fds 1 and 2 are pipes read by threads, so the output of
child processes is captured too; ``sys.stdout``/``sys.stderr`` send messages directly.
"""

import builtins
import json
import os
import platform
import queue
import resource
import signal
import sys
import threading
import time
import traceback
import types
import uuid

from .agent_calls import Call, UsageError
from .agent_code import (
    compile_cell,
    complete_reply,
    format_error,
    inspect_reply,
    is_complete,
    mimebundle,
    safe_str,
)
from .agent_display import install as install_display
from .agent_figures import cpu_times, peak_memory, reset_hwm, usage
from .agent_magics import Shell
from .agent_output import Display, NoStdin, Output, PipeReader, write_all
from .agent_timing import TimingMagics

# Run as ``python3 -I -c BOOTSTRAP``, then write the source's length in bytes (decimal), a
# newline and the source (worker_source()) to the process's stdin; os.read consumes
# nothing beyond it. The microVM guest has this text baked in (its manifest holds its
# hash): a change here means rebuilding the guest image.
BOOTSTRAP = """
import os
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("symbi bootstrap: stdin closed before the worker source")
        data += chunk
    return data
size = b""
while not size.endswith(b"\\n"):
    size += read(1)
exec(compile(read(int(size)), "<symbi-worker>", "exec"), {"__name__": "__main__"})
"""

PROTOCOL = 3
#: The most output held for the next cell while none runs.
HELD_BYTES = 1024 * 1024
TRUNCATION_MARKER = "\n... [output truncated at {} bytes]\n"
#: The file names of the agent's own code (each module's, as it was compiled: a path,
#: or the name worker_source() gave it): their frames are left out of a cell's traceback.
_SELF_FILES = {
    f.__code__.co_filename
    for f in (
        lambda: None,
        mimebundle,
        write_all,
        install_display,
        Call.parse,
        TimingMagics.line_time,
        Shell.get_ipython,
    )
}
_SIGINT = {signal.SIGINT}
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect at start


def _discard_pending_sigint():
    while signal.sigtimedwait(_SIGINT, 0) is not None:
        pass


class Worker:
    """The agent: owns the namespace, the protocol fds and the output plumbing."""

    def __init__(self):
        self.main_ident, self.pid = threading.get_ident(), os.getpid()
        self.write_lock, self.state = threading.Lock(), threading.Lock()
        # Held while a cell's message is sent, and to end the cell: its reply then
        # follows every message of it, as the host requires.
        self.cell_lock = threading.RLock()
        self.sync, self.sync_seq = threading.Condition(), 0
        self.sync_prefix = f"\x00symbi-sync-{uuid.uuid4().hex}:"
        self.requests: queue.SimpleQueue = queue.SimpleQueue()  # of requests (dicts)
        self.current_id, self.busy, self.user_code = None, False, False
        self.cap, self.counts = None, {"stdout": 0, "stderr": 0}
        # Output written while no cell runs (a thread a cell left), for the next cell.
        self.held: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.held_bytes = 0
        self.loop = None
        self.clear_refs = reset_hwm()
        self._redirect_fds()
        self.module = types.ModuleType("__main__")
        self.ns = self.module.__dict__
        api = Display(self)
        self.ns.update(
            __builtins__=builtins,
            display=api.display,
            update_display=api.update_display,
            clear_output=api.clear_output,
        )
        # IPython's syntax, transformed on the host, calls get_ipython(): the stand-in.
        self.shell = Shell(self, api)
        install_display(self.shell, api)
        self._previous_main = sys.modules.get("__main__")  # keeps the loader alive
        sys.modules["__main__"] = self.module

    def _redirect_fds(self):
        self.proto_in, self.proto_out = os.dup(0), os.dup(1)  # non-inheritable
        self.diag = os.dup(2)  # the original stderr, for the worker's own failures
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.readers, self.pipe_ids = {}, {}
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)  # inheritable: child processes write here too
            os.close(write_end)
            self.pipe_ids[fd] = os.fstat(fd)[1:3]  # (inode, device): is fd still ours?
            self.readers[fd] = PipeReader(self, name, read_end)
        self.streams = [Output(self, "stdout", 1), Output(self, "stderr", 2)]
        sys.stdout, sys.stderr = self.streams
        sys.stdin = NoStdin()

    # -- sending -------------------------------------------------------------------------

    def send(self, msg, flush=True):
        if os.getpid() != self.pid:
            return  # a forked child (multiprocessing): only the worker speaks the protocol
        if flush:  # buffered print output goes out before any other message
            for stream in self.streams:
                stream.flush()
        line = json.dumps(msg, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        # On the main thread SIGINT stays blocked while writing: a KeyboardInterrupt
        # between two os.write calls would leave half a message on the protocol fd.
        main = threading.get_ident() == self.main_ident
        try:
            if main:
                signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
            with self.write_lock:
                write_all(self.proto_out, line.encode("ascii"))
        except BrokenPipeError:
            os._exit(0)  # the host is gone
        finally:
            if main and self.user_code:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)

    def send_cell(self, msg, flush=True):
        """Send a message of the running cell; nothing once it has ended (output of a
        thread it left behind, which the host would take for a protocol violation)."""
        if flush:  # first, and outside the lock that stream() takes under its own
            for stream in self.streams:
                stream.flush()
        with self.cell_lock:
            if self.current_id is not None:
                self.send({"id": self.current_id, **msg}, flush=False)

    def stream(self, name, text):
        """Send output of the running (else the last) cell, within its output cap."""
        if not text:
            return
        data = text.encode("utf-8", "replace")  # lone surrogates become "?"
        if os.getpid() != self.pid:  # a forked child: through the pipe, to the worker
            write_all(1 if name == "stdout" else 2, data)
            return
        with self.cell_lock:
            if self.current_id is None:
                room = max(0, HELD_BYTES - self.held_bytes)
                if room:
                    self.held[name].append(data[:room].decode("utf-8", "ignore"))
                    self.held_bytes += min(room, len(data))
                return
            with self.state:
                used = self.counts[name]
                self.counts[name] = used + len(data)
                room = len(data) if self.cap is None else max(0, self.cap - used)
            text = data[:room].decode("utf-8", "ignore")
            if text:
                self.send_cell({"type": "stream", "name": name, "text": text}, flush=False)

    # -- requests ------------------------------------------------------------------------

    def read_requests(self):
        """Reader thread: answers usage/interrupt/shutdown itself, queues the rest."""
        with open(self.proto_in, "rb") as proto:
            for line in proto:
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    kind = req.get("type")
                except (ValueError, AttributeError) as exc:
                    self.reply(None, _protocol_error(f"bad request line: {exc}"), False)
                    continue
                if kind == "interrupt":
                    threading.Thread(target=self.interrupt, daemon=True).start()
                elif kind == "usage":
                    self.reply(req.get("id"), usage(), False)  # out of band
                elif kind == "shutdown":
                    break
                else:
                    self.requests.put(req)
        # Shutdown or EOF (the host died): exit, but never in the middle of a message.
        self.write_lock.acquire(timeout=1.0)
        os._exit(0)

    def interrupt(self):
        """SIGINT to the running cell's thread. A signal that lands just before a blocking
        call starts (typically while the GIL is handed over on the way into time.sleep)
        is only noticed when that call returns, so send it again while the main thread's
        innermost frame stays where it was."""
        where = None
        while True:
            with self.state:
                frame = sys._current_frames().get(self.main_ident)
                now = self.current_id, id(frame), frame and frame.f_lasti
                if not self.busy or where not in (None, now):
                    return
                where = now
                signal.pthread_kill(self.main_ident, signal.SIGINT)
            time.sleep(0.2)

    def reply(self, rid, content, flush=True):
        self.send({"id": rid, "type": "reply", "content": content}, flush)

    def serve(self):
        for reader in self.readers.values():
            threading.Thread(
                target=_guard(self, reader.run), name=f"symbi-{reader.name}", daemon=True
            ).start()
        self.send(
            {
                "type": "ready",
                "protocol": PROTOCOL,
                "pid": os.getpid(),
                "python": platform.python_version(),
                "clear_refs": self.clear_refs,
            }
        )
        threading.Thread(target=_guard(self, self.read_requests), daemon=True).start()
        handlers = {
            "execute": self.execute,
            "complete": lambda r: complete_reply(self.ns, r),
            "inspect": lambda r: inspect_reply(self.ns, r),
            "is_complete": lambda r: is_complete(r["code"]),
        }
        while True:
            req = self.requests.get()
            handler = handlers.get(req.get("type"))
            try:
                content = (
                    handler(req)
                    if handler
                    else _protocol_error(f"unknown request type {req.get('type')!r}")
                )
            except Exception as exc:
                content = _protocol_error(f"{type(exc).__name__}: {exc}")
            self.reply(req.get("id"), content)

    # -- execute -------------------------------------------------------------------------

    def execute(self, req):
        code, cell = req.get("code", ""), req.get("cell_name") or "<cell>"
        _discard_pending_sigint()  # interrupts sent while idle must not hit this cell
        with self.cell_lock, self.state:
            self.current_id, self.busy, self.cap = req.get("id"), True, req.get("max_output_bytes")
            self.counts = {"stdout": 0, "stderr": 0}
            held, self.held, self.held_bytes = self.held, {"stdout": [], "stderr": []}, 0
        for name, texts in held.items():
            self.stream(name, "".join(texts))
        user0, sys0 = cpu_times()
        start = time.monotonic()
        self.clear_refs = self.clear_refs and reset_hwm()
        self.shell.network = req.get("network") is True
        error: tuple[BaseException, list[str]] | None
        try:
            parts = compile_cell(code, cell, req.get("source"))
        except Exception as exc:  # SyntaxError mostly: no frames worth showing
            error = exc, traceback.format_exception_only(exc)
        else:
            _, raised = self._guarded(self._run, parts, bool(req.get("silent")))
            # After every cell, as IPython's post_execute: inline figures among others.
            _, after = self._guarded(self.shell.post_execute)
            raised = raised or after
            error = None if raised is None else (raised, self._error_lines(raised, cell))
        wall = time.monotonic() - start
        user1, sys1 = cpu_times()
        peak, method = peak_memory(self.clear_refs)
        self._finish_output()
        with self.state:
            self.busy = False
        content = {
            "status": "error" if error else "ok",
            "cpu_user_seconds": user1 - user0,
            "cpu_system_seconds": sys1 - sys0,
            "wall_seconds": wall,
            "peak_memory_bytes": peak,
            "memory_method": method,
            # the largest child process so far: a one-shot run's commands
            "children_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "interrupted": error is not None and isinstance(error[0], KeyboardInterrupt),
        }
        payload = self.shell.take_payload()
        if payload:  # help (``len?``) for the pager, as ipykernel's execute_reply has it
            content["payload"] = payload
        if error and isinstance(error[0], SystemExit):
            # the status the code asked for, as `python3 file.py` would exit with it
            code = error[0].code
            content["exit_code"] = 0 if code is None else code if isinstance(code, int) else 1
        for name in ("stdout", "stderr"):
            content[f"{name}_bytes"] = self.counts[name]
            content[f"{name}_truncated"] = self.cap is not None and self.counts[name] > self.cap
        if error:
            raised, lines = error
            details = {
                "ename": type(raised).__name__,
                "evalue": safe_str(raised),
                "traceback": "".join(lines).splitlines(),
            }
            self.send_cell({"type": "error", **details})
            content.update(details)
        with self.cell_lock:
            self.current_id = None  # the reply, sent next, ends the cell
        return content

    @staticmethod
    def _error_lines(raised, cell):
        if isinstance(raised, UsageError):  # a magic's: one line, as IPython shows it
            return [f"UsageError: {safe_str(raised)}\n"]
        if isinstance(raised, SyntaxError) and raised.filename == cell:
            return traceback.format_exception_only(raised)  # in a magic's code: as a cell's
        return format_error(raised, cell, _SELF_FILES)

    def _guarded(self, fn, *args):
        """Run user code with SIGINT deliverable; return ``(value, exception)``."""
        try:
            try:
                self.user_code = True
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)
                return fn(*args), None
            finally:
                self.user_code = False
                signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too, like IPython
            return None, exc

    def _run(self, parts, silent):
        body, last, hide = parts
        if body is not None:
            self._eval(body)
        value = None if last is None else self._eval(last)
        if value is not None and not (silent or hide):
            self.ns["___"], self.ns["__"], self.ns["_"] = self.ns.get("__"), self.ns.get("_"), value
            data, metadata = mimebundle(value)
            self.send_cell({"type": "execute_result", "data": data, "metadata": metadata})

    def _eval(self, code):
        result = eval(code, self.ns)
        if not code.co_flags & _CO_COROUTINE:
            return result
        import asyncio  # only cells with top-level await pay for it

        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # a cell's asyncio.run() unsets it
        task = self.loop.create_task(result)
        try:
            return self.loop.run_until_complete(task)
        finally:
            if not task.done():  # interrupted: cancel, so nothing runs on in the background
                task.cancel()
                try:
                    self.loop.run_until_complete(task)
                except BaseException:
                    pass

    def _finish_output(self):
        """Flush, drain the fd pipes up to a marker, then note any truncation."""
        for f in (*self.streams, sys.__stdout__, sys.__stderr__):
            if f is None:
                continue
            try:
                f.flush()
            except Exception:
                pass
        with self.sync:
            self.sync_seq += 1
            seq = self.sync_seq
        waiting = []
        for fd, reader in self.readers.items():
            try:
                if os.fstat(fd)[1:3] == self.pipe_ids[fd]:  # a cell may have redirected it
                    os.write(fd, f"{self.sync_prefix}{seq}\x00".encode())
                    waiting.append(reader)
            except OSError:
                pass
        with self.sync:
            self.sync.wait_for(lambda: all(r.seen >= seq for r in waiting), timeout=1.0)
        for name in ("stdout", "stderr"):
            if self.cap is not None and self.counts[name] > self.cap:
                self.send_cell(
                    {"type": "stream", "name": name, "text": TRUNCATION_MARKER.format(self.cap)},
                    flush=False,
                )


def _protocol_error(text):
    return {"status": "error", "ename": "ProtocolError", "evalue": text, "traceback": []}


def _guard(worker, fn):
    """A worker thread that fails leaves a traceback on the original stderr and exits."""

    def run():
        try:
            fn()
        except BaseException:
            os.write(worker.diag, traceback.format_exc().encode("utf-8", "replace"))
            os._exit(70)

    return run


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGINT is blocked except while user code runs (see Worker._guarded); threads
    # started from here inherit the block, so an interrupt only ever hits a cell.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    Worker().serve()
