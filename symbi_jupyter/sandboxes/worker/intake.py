"""What a worker writes to the host, as the host admits it: framed and decoded with
bounds (:mod:`.frames`), each message checked against the requests open for it, and
a cell's stream output capped here, before anything reaches the client."""

from __future__ import annotations

import json
import queue
import reprlib
import threading
from collections.abc import Callable
from typing import Any

from .._streams import TRUNCATION_MARKER
from .frames import MAX_DEPTH, MAX_MESSAGE_BYTES, LineSplitter, ProtocolViolation, decode

#: Called with each message of the running cell (stream, display_data, error, ...).
MessageCallback = Callable[[dict[str, Any]], None]

#: The messages a worker may send for a request, once it is ready.
CELL_MESSAGES = frozenset(
    {"stream", "display_data", "update_display_data", "clear_output", "execute_result", "error"}
)


class Intake:
    """The worker's protocol stream on the host: :meth:`feed` puts each admitted
    message on :attr:`messages` and answers why the worker broke the protocol, if it
    did. Before ``ready``, lines that are not the agent's are kept as ``garbage`` (a
    serial console may carry boot messages); after it, nothing unexpected passes."""

    def __init__(
        self, max_message_bytes: int = MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH
    ) -> None:
        self.max_depth = max_depth
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.ready = False
        self._lines = LineSplitter(max_message_bytes)
        #: request id -> its kind, from when it is sent until its reply is read
        self._open: dict[int, str] = {}
        self._lock = threading.Lock()

    def expect(self, ident: int, kind: str) -> None:
        """Request ``ident`` (of ``kind``) is about to be sent: its messages may come."""
        with self._lock:
            self._open[ident] = kind

    def feed(self, chunk: bytes) -> str | None:
        """Admit what ``chunk`` completes; the violation, in words, if there is one.
        Total: whatever the worker sends, this returns."""
        try:
            for line in self._lines.feed(chunk):
                self.messages.put(self._admit(line))
        except ProtocolViolation as exc:
            return str(exc)
        except Exception as exc:  # a bug of ours must still end only the worker
            return f"a message the host could not read ({type(exc).__name__})"
        return None

    def _admit(self, line: bytes) -> dict[str, Any]:
        if not self.ready:
            try:
                message = json.loads(line)
            except (ValueError, RecursionError):
                message = None
            if isinstance(message, dict) and message.get("type") == "ready":
                self.ready = True  # here, before the reader takes the next line
                return message
            return {"type": "garbage", "text": line[:200].decode("utf-8", "replace")}
        message = decode(line, self.max_depth)
        kind, ident = message.get("type"), message.get("id")
        with self._lock:
            # JSON's true would match request 1: a request id is an int and nothing else.
            if type(ident) is not int or (asked := self._open.get(ident)) is None:
                raise ProtocolViolation(
                    f"a {_shown(kind)} message for no open request (id {_shown(ident)})"
                )
            if kind == "reply":
                # A second reply finds its request closed: a violation, like any other.
                del self._open[ident]
            elif asked != "execute" or kind not in CELL_MESSAGES:
                raise ProtocolViolation(
                    f"a {_shown(kind)} message, not expected for a {asked} request"
                )
        return message


def _shown(value: Any) -> str:
    """A value the worker sent, as a reason may quote it: short whatever its size (a
    reason is shown to the user and kept as the session's epitaph)."""
    return reprlib.repr(value)


class CellOutput:
    """The host's own output cap for one cell: stream text past ``cap`` bytes is cut
    here, before it reaches the client, whatever the worker does."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.counts = {"stdout": 0, "stderr": 0}
        self.truncated: set[str] = set()

    def relay(self, on_message: MessageCallback) -> MessageCallback:
        def forward(message: dict[str, Any]) -> None:
            if message.get("type") == "stream":
                capped = self.capped(message)
                if not capped:
                    return
                message = capped
            on_message(message)

        return forward

    def capped(self, message: dict[str, Any]) -> dict[str, Any] | None:
        name, text = message.get("name"), message.get("text")
        if name not in self.counts or not isinstance(text, str):
            return None
        data = text.encode("utf-8", "replace")
        used = self.counts[name]
        self.counts[name] = used + len(data)
        if self.cap is None or used + len(data) <= self.cap:
            return message
        kept = data[: max(0, self.cap - used)].decode("utf-8", "ignore")
        if name not in self.truncated:
            self.truncated.add(name)
            kept += TRUNCATION_MARKER.format(self.cap)
        return {**message, "text": kept} if kept else None


def content(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    return content if isinstance(content, dict) else {}
