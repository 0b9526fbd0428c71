"""A hash-chained JSON-lines audit log, and its verifier.

Each line is one record, a JSON object with the caller's fields plus:

``time``  ISO-8601 UTC with microseconds
``user``  login name of the writing process's uid (the uid itself if it has no name)
``seq``   1-based position in the chain
``prev``  SHA-256 (hex) of the previous line's bytes, without its newline; 64 zeros first
``hash``  SHA-256 (hex) of the canonical JSON of the record without ``hash``

Any edit, deletion, reordering or insertion in the middle of the file breaks the chain
and :func:`verify` names the first bad line. A chain alone cannot tell that records
were cut off the end, or that the whole file was rewritten with a fresh chain, so the
writer also anchors it outside the log: ``<log>.head`` names the last record (its
``seq`` and the SHA-256 of its line) under an HMAC whose key, ``<log>.key`` (mode
0600), only the writing user can read. A run cannot forge the anchor unless it runs as
that user (tier None on a host that is not root); whoever can delete the log, its head
and its key together can still start afresh unseen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import fcntl
import hashlib
import hmac
import json
import os
import pwd
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

GENESIS = "0" * 64

#: Fields that :meth:`AuditLog.append` adds; a caller may not supply them.
CHAIN_FIELDS = ("time", "user", "seq", "prev", "hash")

_BLOCK = 8192
# The log and its anchor may sit where others can make links (a path the operator
# chose, in /tmp): the writer, often root, never follows one.
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
# The head file is rewritten in place; it stays far under one disk sector.
_HEAD_BYTES = 512


def sha256_text(data: str | bytes) -> str:
    """SHA-256 hex digest of ``data``; ``str`` is encoded UTF-8 with ``surrogateescape``
    so text decoded from arbitrary bytes hashes to the hash of those bytes."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()


def canonical_json(record: Mapping[str, Any]) -> str:
    """The one serialisation that ``hash`` covers."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: Mapping[str, Any]) -> str:
    """The ``hash`` a record must carry: over everything but ``hash`` itself."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


if TYPE_CHECKING:
    from .result import ExecutionResult


class AuditLog:
    """Append-only, hash-chained JSON-lines log at ``path``.

    Safe to share between threads and processes: every :meth:`append` opens the file,
    takes an exclusive ``flock``, reads the last line for ``prev`` and ``seq``, writes
    one line and releases the lock. The file is created mode 0600, missing parent
    directories mode 0700. ``fsync`` (default on) makes each record durable before
    :meth:`append` returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` with the chain fields added; return what was written."""
        clash = sorted(set(CHAIN_FIELDS) & set(record))
        if clash:
            raise ValueError(f"audit record may not set {', '.join(clash)}: the log adds them")
        body = _jsonable(dict(record))
        body["time"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        body["user"] = _user()

        _makedirs(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                last, seq, complete = _tail(fd)
                body["seq"] = seq + 1
                body["prev"] = GENESIS if last is None else hashlib.sha256(last).hexdigest()
                body["hash"] = record_hash(body)
                line = canonical_json(body).encode("utf-8")
                # A torn last line (a writer died mid-write) stays visible to verify(),
                # but our record must start on a line of its own.
                _write_all(fd, (b"" if complete else b"\n") + line + b"\n")
                if self.fsync:
                    os.fsync(fd)
                # After the record is durable: a head ahead of its log would read as
                # records cut off the end.
                Anchor(self.path).write(body["seq"], hashlib.sha256(line).hexdigest(), self.fsync)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return body


class Anchor:
    """The chain's head kept beside the log: ``<log>.head`` holds the last record's
    ``seq`` and line hash under an HMAC keyed by ``<log>.key``."""

    def __init__(self, log: str | os.PathLike[str]) -> None:
        self.head_path = Path(f"{os.fspath(log)}.head")
        self.key_path = Path(f"{os.fspath(log)}.key")

    def exists(self) -> bool:
        return self.head_path.exists() or self.key_path.exists()

    def mac(self, key: bytes, seq: int, line_hash: str) -> str:
        message = f"symbi-jupyter audit head {seq} {line_hash}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def key(self, create: bool = False) -> bytes:
        """The key; made (32 random bytes, mode 0600) where ``create`` and missing."""
        if create:
            with contextlib.suppress(FileExistsError):
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
                try:
                    _write_all(fd, os.urandom(32).hex().encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return bytes.fromhex(_read(self.key_path).decode().strip())

    def write(self, seq: int, line_hash: str, fsync: bool) -> None:
        """Name record ``seq`` (whose line hashes to ``line_hash``) as the last one."""
        head = {"seq": seq, "hash": line_hash, "mac": self.mac(self.key(True), seq, line_hash)}
        data = canonical_json(head).encode().ljust(_HEAD_BYTES - 1) + b"\n"
        fd = os.open(self.head_path, os.O_WRONLY | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            os.pwrite(fd, data, 0)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> tuple[int, str]:
        """The anchored ``(seq, line hash)``; ValueError (with the reason) where the
        head or its key is missing, unreadable or does not match."""
        try:
            key = self.key()
        except FileNotFoundError:
            raise ValueError(f"the anchor's key {self.key_path} is missing") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the anchor's key {self.key_path}: {exc}") from None
        try:
            head = json.loads(_read(self.head_path))
            seq, line_hash, mac = head["seq"], head["hash"], head["mac"]
        except FileNotFoundError:
            raise ValueError(f"the anchor {self.head_path} is missing") from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"cannot read the anchor {self.head_path}: {exc}") from None
        if not (
            isinstance(seq, int)
            and isinstance(line_hash, str)
            and isinstance(mac, str)
            and hmac.compare_digest(mac, self.mac(key, seq, line_hash))
        ):
            raise ValueError(f"the anchor {self.head_path} was forged or edited (MAC mismatch)")
        return seq, line_hash


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`. ``broken_at`` is the 1-based line number of the first
    bad record; ``records`` counts the intact records before it (all of them if ``ok``)."""

    ok: bool
    records: int
    broken_at: int | None = None
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"intact: {self.records} record{'' if self.records == 1 else 's'}"
        if self.broken_at is None:
            return f"BROKEN: {self.reason}"
        return f"BROKEN at line {self.broken_at}: {self.reason}"


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every record's ``hash``, ``seq`` and ``prev``, stopping at the first bad
    line, then that the log ends where its anchor says (:class:`Anchor`)."""
    anchor = Anchor(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return VerifyReport(ok=False, records=0, reason="no such file")
    except OSError as exc:
        return VerifyReport(ok=False, records=0, reason=f"cannot read: {exc.strerror or exc}")
    anchored: tuple[int, str] | None = None
    trouble = ""
    if anchor.exists():
        try:
            anchored = anchor.read()
        except ValueError as exc:
            trouble = str(exc)
    with f:
        report, hashes = _verify_chain(f, anchored[0] if anchored else None)
    if not report.ok:
        return report
    count = report.records
    if trouble:
        return VerifyReport(ok=False, records=count, reason=trouble)
    if anchored is None:
        if count == 0:
            return report
        return VerifyReport(
            ok=False,
            records=count,
            reason=f"no anchor ({anchor.head_path.name}, {anchor.key_path.name}) beside the "
            "log: records cut off its end or a rewritten chain would not show",
        )
    seq, line_hash = anchored
    if seq > count:
        return VerifyReport(
            ok=False,
            records=count,
            reason=f"records were cut off the end: the anchor names record {seq}, "
            f"the log ends at {count}",
        )
    if hashes.get(seq) != line_hash:
        return VerifyReport(
            ok=False,
            records=count,
            broken_at=seq,
            reason="the log was rewritten: this is not the record its anchor names",
        )
    if seq < count:
        return VerifyReport(
            ok=False,
            records=seq,
            broken_at=seq + 1,
            reason=f"{count - seq} record(s) after the anchor: appended without its key, "
            "or the writer stopped between a record and its anchor",
        )
    return report


def _verify_chain(f: Any, want: int | None) -> tuple[VerifyReport, dict[int, str]]:
    """The chain's report, and the line hashes of record ``want`` (if any) and of the
    last record."""

    def broken(lineno: int, reason: str) -> tuple[VerifyReport, dict[int, str]]:
        return VerifyReport(ok=False, records=lineno - 1, broken_at=lineno, reason=reason), {}

    prev, count = GENESIS, 0
    hashes: dict[int, str] = {}
    for lineno, raw in enumerate(f, start=1):
        if not raw.endswith(b"\n"):
            return broken(lineno, "incomplete last line (truncated)")
        line = raw[:-1]
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return broken(lineno, "not a JSON record")
        if not isinstance(record, dict):
            return broken(lineno, "not a JSON record")
        missing = [k for k in ("seq", "prev", "hash") if k not in record]
        if missing:
            return broken(lineno, f"missing field {missing[0]!r}")
        try:
            intact = record["hash"] == record_hash(record)
        except (UnicodeEncodeError, TypeError, ValueError):
            intact = False  # e.g. an escaped lone surrogate: never written by append()
        if not intact:
            return broken(lineno, "record was edited (hash mismatch)")
        if record["seq"] != lineno:
            return broken(
                lineno,
                f"record deleted, inserted or reordered (seq {record['seq']!r}, expected {lineno})",
            )
        if record["prev"] != prev:
            return broken(lineno, "previous record was edited or replaced (prev mismatch)")
        prev, count = hashlib.sha256(line).hexdigest(), lineno
        if lineno == want:
            hashes[lineno] = prev
    return VerifyReport(ok=True, records=count), hashes


def _tail(fd: int) -> tuple[bytes | None, int, bool]:
    """Return (the last line without its newline, or None for an empty file; the seq
    of that line; whether the file ends with a newline).

    Reads backwards from the end, so an append costs the same on a long log.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None, 0, True
    complete = os.pread(fd, 1, size - 1) == b"\n"
    lines = _lines_backwards(fd, size - 1 if complete else size)
    last = next(lines)
    seq = _seq_of(last)
    if seq is None:
        # The last line is not a record (torn or tampered; verify() will say so).
        # Continue from the nearest record above, counting the lines in between, so
        # seq still equals the line number.
        above = 0
        for above, line in enumerate(lines, start=1):
            found = _seq_of(line)
            if found is not None:
                seq = found + above
                break
        else:
            seq = above + 1
    return last, seq, complete


def _lines_backwards(fd: int, end: int) -> Iterator[bytes]:
    """Yield the lines in the file's first ``end`` bytes, last line first."""
    buf, pos = b"", end
    while pos > 0:
        start = max(0, pos - _BLOCK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        parts = buf.split(b"\n")
        # parts[0] may be the tail of a line that starts further back: carry it.
        yield from reversed(parts[1:])
        buf = parts[0]
    yield buf


def _seq_of(line: bytes) -> int | None:
    try:
        seq = json.loads(line.decode("utf-8")).get("seq")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(64 * 1024)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _makedirs(directory: Path) -> None:
    # Path.mkdir(parents=True) ignores `mode` for the parents; create each level 0700.
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another writer made it first


def _user() -> str:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _jsonable(value: Any) -> Any:
    """A JSON-ready copy of ``value``: enums by value, paths and unknown objects as str,
    and strings made encodable as UTF-8 so a record can always be written."""
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


def result_record(result: ExecutionResult) -> dict[str, Any]:
    """What the audit log keeps of a run's result: the host's figures, never its output."""
    return {
        "exit_code": result.exit_code,
        "killed_by": result.killed_by,
        "timed_out": result.timed_out,
        "wall_seconds": result.wall_seconds,
        "cpu_user_seconds": result.cpu_user_seconds,
        "cpu_system_seconds": result.cpu_system_seconds,
        "peak_memory_bytes": result.peak_memory_bytes,
        "memory_method": result.memory_method,
        "language": result.language,
    }
