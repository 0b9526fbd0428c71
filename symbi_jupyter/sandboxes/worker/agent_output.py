"""The worker agent's output plumbing: the cell's ``sys.stdout``/``sys.stderr`` and
``sys.stdin``, the threads that read the fd-level output pipes, and the display API
(``display``, ``update_display``, ``clear_output``) of the user namespace.

Part of the worker agent (:mod:`.agent`): stdlib only, shipped as source with it by
:func:`.shipping.worker_source`. Everything here speaks through the :class:`.agent.Worker`
it is given (its ``stream`` and ``send``), never to the protocol fd itself.
"""

import codecs
import io
import os
import re
import threading
import uuid

from .agent_code import base64_bytes, mimebundle


class StdinNotImplementedError(NotImplementedError):
    """Raised on any read of ``sys.stdin``: cells get no interactive input."""


class Output(io.TextIOBase):
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


class NoStdin(io.TextIOBase):
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


class PipeReader:
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


class Display:
    """The display API the user namespace gets: rich output of the running cell."""

    def __init__(self, worker):
        self._worker = worker

    def _send(self, kind, obj, raw, metadata, display_id):
        data, md = (base64_bytes(obj), {}) if raw else mimebundle(obj)
        transient = {} if display_id is None else {"display_id": display_id}
        self._worker.send_cell(
            {
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
            self._send("display_data", obj, raw, metadata, display_id)
        return None if display_id is None else DisplayHandle(self, display_id)

    def update_display(self, obj, *, display_id, raw=False, metadata=None):
        self._send("update_display_data", obj, raw, metadata, display_id)

    def clear_output(self, wait=False):
        self._worker.send_cell({"type": "clear_output", "wait": bool(wait)})


class DisplayHandle:
    """Returned by ``display(..., display_id=...)``; updates that output in place."""

    def __init__(self, api, display_id):
        self._api, self.display_id = api, display_id

    def display(self, obj, **kwargs):
        self._api.display(obj, display_id=self.display_id, **kwargs)

    def update(self, obj, **kwargs):
        self._api.update_display(obj, display_id=self.display_id, **kwargs)

    def __repr__(self):
        return f"<DisplayHandle display_id={self.display_id}>"


def write_all(fd, data):
    """``os.write`` until all of ``data`` is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
