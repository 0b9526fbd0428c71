"""Reading the worker's protocol on the host: JSON lines from code the user does not
trust. Every step is bounded and total: lines are split in linear time and capped in
length, each is decoded with a nesting limit, and anything else is a
:class:`ProtocolViolation` (which ends that worker, never the kernel)."""

from __future__ import annotations

import json
from typing import Any

#: The longest protocol line a worker may send, by default (a rich output, such as a
#: plot as base64, is one line).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How deeply the JSON of one message may nest.
MAX_DEPTH = 64


class ProtocolViolation(Exception):
    """The worker broke the protocol: it is ended, and this says how."""


class LineSplitter:
    """Splits a byte stream into lines, each at most ``limit`` bytes, in time linear
    in the input: a chunk is searched once, and a partial line is kept as a list of
    pieces, joined only when its newline comes."""

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit = limit
        self._pieces: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes (without their newlines)."""
        lines = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._take(chunk[start:end])
            lines.append(b"".join(self._pieces))
            self._pieces, self._size = [], 0
            start = end + 1
        self._take(chunk[start:])
        return lines

    def _take(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._size > self.limit:
            self._pieces, self._size = [], 0
            raise ProtocolViolation(
                f"a protocol line longer than {self.limit} bytes (the limit of one message)"
            )
        self._pieces.append(piece)


def decode(line: bytes, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """One message: a JSON object nested at most ``max_depth`` deep, with no NaN or
    Infinity (Python's json reads them, but they are not JSON: a figure or a rich
    output carrying one would fail where the kernel sends it on)."""
    try:
        message = json.loads(line, parse_constant=_not_json)
    except RecursionError:
        raise ProtocolViolation(f"a protocol message nested more than {max_depth} deep") from None
    except ValueError as exc:
        raise ProtocolViolation(f"a protocol line that is not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ProtocolViolation("a protocol line that is not a JSON object")
    if depth(message) > max_depth:
        raise ProtocolViolation(f"a protocol message nested more than {max_depth} deep")
    return message


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def depth(value: Any) -> int:
    """How deeply ``value``'s lists and dicts nest, found without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in item if isinstance(child, dict | list))
    return deepest
