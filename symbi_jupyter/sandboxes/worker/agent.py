"""The worker agent: one persistent Python namespace that runs cells on request.

Stdlib only, Python 3.11: it is shipped as source into containers and guests that have
nothing but Debian's python3. Started as ``python3 agent.py`` or through ``BOOTSTRAP``
(a length line, then the source, on fd 0), which execs it as ``<symbi-worker>``.

Protocol: JSON lines (``ensure_ascii``, compact separators) on the worker's own stdin
(requests) and stdout (messages); nothing else is written there. Never pickle.

Host -> worker, each with an integer ``id`` except the last two:
  execute {code, silent, max_output_bytes, cell_name}; complete {code, cursor_pos};
  inspect {code, cursor_pos, detail_level}; is_complete {code};
  usage (answered at once, even while a cell runs); interrupt (KeyboardInterrupt in the
  running cell, ignored when idle); shutdown (exit 0; EOF on stdin likewise).
Worker -> host: ``{"type":"ready","protocol":1,"pid","python","clear_refs"}`` once; then
for a request N any of ``stream``, ``display_data``, ``update_display_data``,
``clear_output``, ``execute_result``, ``error`` with ``"id":N``, and exactly one final
``{"id":N,"type":"reply","content":{...}}``.

Output: fd 0 is /dev/null, fds 1 and 2 are pipes read by threads, so the output of
child processes is captured too; ``sys.stdout``/``sys.stderr`` send messages directly.
"""

import ast
import base64
import builtins
import codecs
import codeop
import io
import json
import linecache
import os
import platform
import pprint
import queue
import re
import resource
import signal
import sys
import threading
import time
import traceback
import types
import uuid

# Run as ``python3 -I -c BOOTSTRAP``, then write the source's length in bytes (decimal), a
# newline and the source to the process's stdin; os.read consumes nothing beyond it.
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

PROTOCOL = 1
TRUNCATION_MARKER = "\n... [output truncated at {} bytes]\n"
_SELF_FILES = {(lambda: None).__code__.co_filename, "<symbi-worker>"}
_SIGINT = {signal.SIGINT}
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect at start
_COMPILE_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
)


class StdinNotImplementedError(NotImplementedError):
    """Raised on any read of ``sys.stdin``: cells get no interactive input."""


def _proc_status(*keys):
    """Values in bytes of ``/proc/self/status`` fields such as VmRSS (None if absent)."""
    found = dict.fromkeys(keys)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in found:
                    found[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return [found[k] for k in keys]


def _reset_hwm():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_times():
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def _discard_pending_sigint():
    while signal.sigtimedwait(_SIGINT, 0) is not None:
        pass


def mimebundle(obj):
    """IPython-like ``(data, metadata)`` of ``obj``; ``text/plain`` is always there."""
    data, metadata = {}, {}

    def call(name, *args, **kwargs):
        try:  # a broken repr method only loses its own MIME type
            method = None if isinstance(obj, type) else getattr(obj, name, None)
            return method(*args, **kwargs) if callable(method) else None
        except Exception:
            return None

    bundle = call("_repr_mimebundle_", include=None, exclude=None)
    if isinstance(bundle, tuple) and len(bundle) == 2:
        bundle, metadata = bundle[0], dict(bundle[1] or {})
    if isinstance(bundle, dict):
        data.update(bundle)
    else:
        for mime, name in _REPR_METHODS:
            value = call(name)
            if isinstance(value, tuple) and len(value) == 2:
                value, metadata[mime] = value
            if value is not None:
                data[mime] = value
    if "text/plain" not in data:
        plain = isinstance(obj, dict | list | tuple | set | frozenset)
        data["text/plain"] = pprint.pformat(obj, sort_dicts=False) if plain else repr(obj)
    return _base64_bytes(data), metadata


def _base64_bytes(data):
    """JSON carries no bytes: binary MIME data goes base64-encoded, as in Jupyter."""
    return {
        mime: base64.b64encode(value).decode("ascii")
        if isinstance(value, bytes | bytearray)
        else value
        for mime, value in data.items()
    }


def is_complete(code):
    """Jupyter's is_complete_reply content, with IPython's rules of thumb."""
    try:
        compiled = codeop.compile_command(code, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError, TypeError, MemoryError):
        return {"status": "invalid"}
    lines = code.rstrip("\n").split("\n")
    last = lines[-1]
    indent = last[: len(last) - len(last.lstrip())]
    if compiled is None:
        return {"status": "incomplete", "indent": indent + "    " * last.rstrip().endswith(":")}
    if len(lines) > 1 and indent and not code.endswith("\n\n"):
        return {"status": "incomplete", "indent": indent}  # inside a block: wait for a blank
    return {"status": "complete"}


def _name_at(code, pos):
    """The dotted name at the cursor, or the callee when the cursor follows ``name(``."""
    left, right = re.search(r"[\w.]*$", code[:pos]).group(), re.match(r"\w*", code[pos:]).group()
    name = (left + right).strip(".")
    if not name:
        call = re.search(r"([\w.]+)\(\s*$", code[:pos])
        name = call.group(1) if call else ""
    return name


def describe(name, obj, detail_level):
    """IPython-like plain-text help for ``obj``."""
    import inspect

    lines = [f"Type:      {type(obj).__name__}"]
    if not callable(obj):
        text = _safe_str(obj, repr)
        lines.append(f"String form: {text if len(text) < 200 else text[:200] + '...'}")
    try:
        lines.append(f"Signature: {name}{inspect.signature(obj)}")
    except Exception:  # builtins without a text signature, odd callables
        pass
    lines.append(f"Docstring: {inspect.getdoc(obj) or '<no docstring>'}")
    if detail_level:
        try:
            lines.append(f"File:      {inspect.getsourcefile(obj)}")
            lines.append("Source:\n" + inspect.getsource(obj))
        except (TypeError, OSError):
            pass
    return "\n".join(lines)


class _Output(io.TextIOBase):
    """``sys.stdout``/``sys.stderr``: buffers small writes, sends ``stream`` messages."""

    encoding, errors = "utf-8", "strict"

    def __init__(self, worker, name, fd):
        self._worker, self._name, self._fd = worker, name, fd
        self._buf, self._size, self._lock = [], 0, threading.RLock()

    name = property(lambda self: f"<{self._name}>")

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        return self._fd  # the fd-level pipe: what is written there is captured as well

    def write(self, text):
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._buf.append(text)
            self._size += len(text)
            if "\n" in text or self._size >= 8192:
                self.flush()
        return len(text)

    def flush(self):
        with self._lock:  # held while sending, so concurrent flushes keep their order
            if self._buf:
                text = "".join(self._buf)
                self._buf, self._size = [], 0
                self._worker.stream(self._name, text)


class _NoStdin(io.TextIOBase):
    """``sys.stdin``: every read fails with a clear message."""

    def readable(self):
        return True

    def fileno(self):
        raise io.UnsupportedOperation("stdin is not available in the symbi sandbox")

    def read(self, size=-1):
        raise StdinNotImplementedError("stdin is not available in the symbi sandbox")

    readline = read

    def readlines(self, hint=-1):
        return self.read()


class _PipeReader:
    """Reads one fd-level output pipe and forwards it; notes the sync markers it sees."""

    def __init__(self, worker, name, fd):
        self.worker, self.name, self.fd, self.seen = worker, name, fd, 0

    def run(self):
        prefix = re.escape(self.worker.sync_prefix)
        marker, partial = re.compile(prefix + r"(\d+)\x00"), re.compile(prefix + r"\d*")
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while chunk := os.read(self.fd, 65536):
            pending += decoder.decode(chunk)
            while match := marker.search(pending):
                self.worker.stream(self.name, pending[: match.start()])
                pending = pending[match.end() :]
                with self.worker.sync:
                    self.seen = int(match.group(1))
                    self.worker.sync.notify_all()
            # Hold back only what may be the start of a marker split across reads.
            cut = pending.rfind("\x00")
            tail = pending[cut:]
            if cut < 0 or not (self.worker.sync_prefix.startswith(tail) or partial.fullmatch(tail)):
                cut = len(pending)
            self.worker.stream(self.name, pending[:cut])
            pending = pending[cut:]


class DisplayHandle:
    """Returned by ``display(..., display_id=...)``; updates that output in place."""

    def __init__(self, worker, display_id):
        self._worker, self.display_id = worker, display_id

    def display(self, obj, **kwargs):
        self._worker.display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        self._worker.update_display(obj, display_id=self.display_id, **kwargs)

    def __repr__(self):
        return f"<DisplayHandle display_id={self.display_id}>"


class Worker:
    """The agent: owns the namespace, the protocol fds and the output plumbing."""

    def __init__(self):
        self.main_ident, self.pid = threading.get_ident(), os.getpid()
        self.write_lock, self.state = threading.Lock(), threading.Lock()
        self.sync, self.sync_seq = threading.Condition(), 0
        self.sync_prefix = f"\x00symbi-sync-{uuid.uuid4().hex}:"
        self.requests = queue.SimpleQueue()
        self.current_id, self.busy, self.user_code = None, False, False
        self.cap, self.counts = None, {"stdout": 0, "stderr": 0}
        self.loop = None
        self.clear_refs = _reset_hwm()
        self._redirect_fds()
        self.module = types.ModuleType("__main__")
        self.ns = self.module.__dict__
        self.ns.update(
            __builtins__=builtins,
            display=self.display,
            update_display=self.update_display,
            clear_output=self.clear_output,
        )
        self._previous_main = sys.modules.get("__main__")  # keeps our own globals alive
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
            self.readers[fd] = _PipeReader(self, name, read_end)
        self.streams = [_Output(self, "stdout", 1), _Output(self, "stderr", 2)]
        sys.stdout, sys.stderr = self.streams
        sys.stdin = _NoStdin()

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
                _write_all(self.proto_out, line.encode("ascii"))
        except BrokenPipeError:
            os._exit(0)  # the host is gone
        finally:
            if main and self.user_code:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)

    def stream(self, name, text):
        """Send output of the running (else the last) cell, within its output cap."""
        if not text:
            return
        data = text.encode("utf-8", "replace")  # lone surrogates become "?"
        if os.getpid() != self.pid:  # a forked child: through the pipe, to the worker
            _write_all(1 if name == "stdout" else 2, data)
            return
        with self.state:
            rid, used = self.current_id, self.counts[name]
            self.counts[name] = used + len(data)
            room = len(data) if self.cap is None else max(0, self.cap - used)
        text = data[:room].decode("utf-8", "ignore")
        if rid is not None and text:
            self.send({"id": rid, "type": "stream", "name": name, "text": text}, flush=False)

    # -- the display API, in the user namespace ------------------------------------------

    def _send_display(self, kind, obj, raw, metadata, display_id):
        data, md = (_base64_bytes(obj), {}) if raw else mimebundle(obj)
        transient = {} if display_id is None else {"display_id": display_id}
        if self.current_id is not None:
            self.send(
                {
                    "id": self.current_id,
                    "type": kind,
                    "data": data,
                    "metadata": {**md, **(metadata or {})},
                    "transient": transient,
                }
            )

    def display(self, *objs, raw=False, metadata=None, display_id=None, clear=False):
        """Show each object as rich output; with ``display_id`` return a handle."""
        if clear:
            self.clear_output(wait=True)
        if display_id is True:
            display_id = uuid.uuid4().hex
        for obj in objs:
            self._send_display("display_data", obj, raw, metadata, display_id)
        return None if display_id is None else DisplayHandle(self, display_id)

    def update_display(self, obj, *, display_id, raw=False, metadata=None):
        self._send_display("update_display_data", obj, raw, metadata, display_id)

    def clear_output(self, wait=False):
        if self.current_id is not None:
            self.send({"id": self.current_id, "type": "clear_output", "wait": bool(wait)})

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
            "complete": self.complete,
            "inspect": self.inspect,
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
        with self.state:
            self.current_id, self.busy, self.cap = req.get("id"), True, req.get("max_output_bytes")
            self.counts = {"stdout": 0, "stderr": 0}
        user0, sys0 = _cpu_times()
        start = time.monotonic()
        self.clear_refs = self.clear_refs and _reset_hwm()
        try:
            parts = self._compile(code, cell)
        except Exception as exc:  # SyntaxError mostly: no frames worth showing
            error = exc, traceback.format_exception_only(exc)
        else:
            _, exc = self._guarded(self._run, parts, bool(req.get("silent")))
            error = None if exc is None else (exc, _format_error(exc, cell))
        wall = time.monotonic() - start
        user1, sys1 = _cpu_times()
        peak, method = _peak_memory(self.clear_refs)
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
            "interrupted": bool(error) and isinstance(error[0], KeyboardInterrupt),
        }
        if error and isinstance(error[0], SystemExit):
            # the status the code asked for, as `python3 file.py` would exit with it
            code = error[0].code
            content["exit_code"] = 0 if code is None else code if isinstance(code, int) else 1
        for name in ("stdout", "stderr"):
            content[f"{name}_bytes"] = self.counts[name]
            content[f"{name}_truncated"] = self.cap is not None and self.counts[name] > self.cap
        if error:
            exc, lines = error
            details = {
                "ename": type(exc).__name__,
                "evalue": _safe_str(exc),
                "traceback": "".join(lines).splitlines(),
            }
            self.send({"id": req.get("id"), "type": "error", **details})
            content.update(details)
        return content

    def _compile(self, code, cell):
        """``(body, last expression, hide result)`` code objects, as IPython's last_expr."""
        linecache.cache[cell] = (len(code), None, code.splitlines(True), cell)
        tree = ast.parse(code, cell, "exec")
        last = hide = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            node = tree.body.pop()
            last = compile(ast.Expression(node.value), cell, "eval", _COMPILE_FLAGS, True)
            # A trailing ';' hides the result; end_col_offset counts UTF-8 bytes.
            line = re.split(r"\r\n|\r|\n", code)[node.end_lineno - 1].encode()
            hide = line[node.end_col_offset :].lstrip().startswith(b";")
        body = compile(tree, cell, "exec", _COMPILE_FLAGS, True) if tree.body else None
        return body, last, hide

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
            self.send(
                {
                    "id": self.current_id,
                    "type": "execute_result",
                    "data": data,
                    "metadata": metadata,
                }
            )

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
                self.send(
                    {
                        "id": self.current_id,
                        "type": "stream",
                        "name": name,
                        "text": TRUNCATION_MARKER.format(self.cap),
                    },
                    flush=False,
                )

    # -- complete and inspect ------------------------------------------------------------

    def complete(self, req):
        import rlcompleter

        code = req.get("code", "")
        pos = min(max(req.get("cursor_pos", len(code)), 0), len(code))
        text = re.search(r"[\w.]*$", code[:pos]).group()
        matches, completer = [], rlcompleter.Completer(self.ns)
        for state in range(1000 if text else 0):
            match = completer.complete(text, state)
            if match is None:
                break
            match = match.rstrip("(: ")  # readline decorations for callables and keywords
            if match not in matches:
                matches.append(match)
        return {
            "status": "ok",
            "matches": matches,
            "cursor_start": pos - len(text),
            "cursor_end": pos,
            "metadata": {},
        }

    def inspect(self, req):
        code = req.get("code", "")
        name = _name_at(code, min(req.get("cursor_pos", len(code)), len(code)))
        try:
            first, *rest = name.split(".")
            obj = self.ns[first] if first in self.ns else getattr(builtins, first)
            for attr in rest:
                obj = getattr(obj, attr)
        except Exception:  # not found (or a property that raised)
            return {"status": "ok", "found": False, "data": {}, "metadata": {}}
        text = describe(name, obj, req.get("detail_level", 0))
        return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}


def _format_error(exc, cell):
    """Traceback lines from the cell's first frame (else the first frame that is not the
    worker's), leaving out the worker's own frames."""
    error = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    frames, ours = list(error.stack), [f.filename in _SELF_FILES for f in error.stack]
    starts = [i for i, f in enumerate(frames) if f.filename == cell]
    start = (starts or [i for i, own in enumerate(ours) if not own] or [0])[0]
    end = len(frames)
    if isinstance(exc, KeyboardInterrupt) and True in ours[start:]:
        end = ours.index(True, start)  # it hit the worker's plumbing (a print): stop there
    kept = [f for f, own in zip(frames[start:end], ours[start:end], strict=True) if not own]
    error.stack = traceback.StackSummary.from_list(kept)
    return list(error.format())


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _safe_str(obj, to_str=str):
    try:
        return to_str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__} object>"


def _protocol_error(text):
    return {"status": "error", "ename": "ProtocolError", "evalue": text, "traceback": []}


def _peak_memory(hwm_was_reset):
    """``(bytes, method)``: this cell's peak RSS, else the session's peak so far."""
    if hwm_was_reset:
        (hwm,) = _proc_status("VmHWM")
        if hwm is not None:
            return hwm, "worker-hwm"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (maxrss * 1024, "worker-maxrss-session") if maxrss else (None, None)


def usage():
    rss, hwm = _proc_status("VmRSS", "VmHWM")
    return {"memory_bytes": rss, "peak_memory_bytes": hwm, "cpu_seconds": sum(_cpu_times())}


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


if __name__ == "__main__":
    main()
