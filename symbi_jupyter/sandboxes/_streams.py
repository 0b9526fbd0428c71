"""Output capping shared by the backends: keep up to the cap, count and discard the
rest, so a flooding process is never blocked and never fills memory."""

from __future__ import annotations

TRUNCATION_MARKER = "\n... [output truncated at {} bytes]\n"


class CappedStream:
    """One output stream: keeps up to ``cap`` bytes, counts and discards the rest."""

    def __init__(self, name: str, cap: float, keep: bool = True) -> None:
        self.name = name
        self.cap = cap
        self.keep = keep
        self.total = 0
        self.chunks: list[bytes] = []

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def feed(self, chunk: bytes) -> bytes:
        """Count ``chunk``; return the part of it that is kept."""
        room = max(0, self.cap - self.total)
        self.total += len(chunk)
        kept = chunk[: int(min(room, len(chunk)))]
        if kept and self.keep:
            self.chunks.append(kept)
        return kept

    def text(self) -> str:
        text = b"".join(self.chunks).decode("utf-8", errors="replace")
        if self.truncated:
            text += TRUNCATION_MARKER.format(self.cap)
        return text
