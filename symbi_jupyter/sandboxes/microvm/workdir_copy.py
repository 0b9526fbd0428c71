"""Tier3's view of the working directory: a copy.

The guest shares no filesystem with the host: its kernel (tinyconfig plus the
fragment) has neither 9p nor virtiofs, and adding either means rebuilding the guest
and, for virtiofs, a host daemon per VM. So the files a run is shown
(:mod:`..supervisor.workdir_view`) are read here and written into the guest's
``/workspace`` by a cell of their own before the run's: a snapshot taken when the run
starts, read-only by mode (the run owns its copies, so that is a convention, not a
boundary), gone with the VM. The host's files are never written.

The host reads as root what any user may read, through descriptors, following no
link: in a shown directory, files others may read and directories others may enter.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from ...errors import TierUnavailable
from ..base import ExecutionRequest
from ..supervisor import workdir_view
from ..worker import WorkerSession

GUEST_DIR = "/workspace"
#: The most files (and directories) one run copies.
MAX_FILES = 4096
#: How deep below a shown directory the copy goes.
MAX_DEPTH = 32
MiB = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# Runs in the guest's worker as a cell of its own, in a namespace of its own; FILES is
# [(path, base64 or None for a directory)], each directory before what it holds.
_WRITER = """\
import base64, os
for path, data in FILES:
    if data is None:
        os.mkdir(path)
    else:
        with open(path, "xb") as f:
            f.write(base64.b64decode(data))
        os.chmod(path, 0o444)
for path, data in reversed(FILES):
    if data is None:
        os.chmod(path, 0o555)
"""


class TooMuch(Exception):
    """The working directory's shown files are more than a run copies."""


def copy_cell(
    workdir: Path | None, limit_bytes: int, limit_words: str
) -> tuple[str | None, dict[str, str]]:
    """The cell that writes ``workdir``'s shown files into the guest (None: nothing
    to copy), and the enforcement note that says what was copied, or why not. At
    most ``limit_bytes`` of file contents, ``limit_words`` saying what sets it."""
    if workdir is None:
        return None, {}
    names = workdir_view.entries(str(workdir))
    if not names:
        return None, workdir_view.note(names, "")
    files: list[tuple[str, str | None]] = []
    try:
        size = _collect(str(workdir), names, files, limit_bytes, limit_words)
    except TooMuch as exc:
        return None, {workdir_view.KEY: f"not copied: {exc}"}
    cell = f"exec(compile({_WRITER!r}, '<symbi-workdir>', 'exec'), {{'FILES': {files!r}}})\n"
    return cell, workdir_view.note(
        names,
        f"copied into {GUEST_DIR} ({_size(size)}; a snapshot, read-only by mode: the "
        "guest shares no filesystem with the host)",
    )


def _collect(
    workdir: str,
    names: list[str],
    files: list[tuple[str, str | None]],
    limit: int,
    limit_words: str,
) -> int:
    """Append the shown entries ``names`` of ``workdir`` and all they hold to
    ``files``; returns the bytes read. :class:`TooMuch` past the limits."""
    total = 0

    def add(dirfd: int, name: str, st: os.stat_result, guest: str, depth: int) -> None:
        nonlocal total
        if len(files) >= MAX_FILES:
            raise TooMuch(f"more than {MAX_FILES} files and directories")
        if stat.S_ISDIR(st.st_mode):
            if depth > MAX_DEPTH:
                raise TooMuch(f"directories more than {MAX_DEPTH} levels deep")
            files.append((guest, None))
            fd = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
            try:
                with os.scandir(fd) as listing:
                    inside = sorted(listing, key=lambda entry: entry.name)
                for entry in inside:
                    try:
                        inner = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if workdir_view.others_may_read(inner):
                        add(fd, entry.name, inner, f"{guest}/{entry.name}", depth + 1)
            finally:
                os.close(fd)
            return
        fd = os.open(name, _FILE_FLAGS, dir_fd=dirfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since it was listed
                return
            data = _read(fd, limit - total + 1)
        finally:
            os.close(fd)
        total += len(data)
        if total > limit:
            raise TooMuch(f"more than {_size(limit)}, {limit_words}")
        files.append((guest, base64.b64encode(data).decode("ascii")))

    top = os.open(workdir, _DIR_FLAGS)
    try:
        owner = os.fstat(top).st_uid
        for name in names:
            try:
                st = os.stat(name, dir_fd=top, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if workdir_view.shown_entry(st, owner):  # again: it may have changed
                add(top, name, st, f"{GUEST_DIR}/{name}", 1)
    finally:
        os.close(top)
    return total


def _read(fd: int, most: int) -> bytes:
    chunks, got = [], 0
    while got < most and (chunk := os.read(fd, min(1 << 20, most - got))):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} bytes"
    if count < MiB:
        return f"{count / 1024:.1f} KiB"
    return f"{count / MiB:.1f} MiB"


def copy_in(session: WorkerSession, cell: str, request: ExecutionRequest) -> None:
    """Run the cell that copies the working directory's files into the guest;
    TierUnavailable, with the guest's reason, if it fails."""
    said: list[str] = []

    def on_message(message: dict[str, Any]) -> None:
        if message.get("type") == "error":
            said.append(f"{message.get('ename')}: {message.get('evalue')}")
        elif message.get("type") == "stream":
            said.append(str(message.get("text", "")))

    outcome = session.execute(cell, on_message, limits=request.limits, silent=True)
    if outcome.status != "ok":
        why = outcome.session_lost or "; ".join(said) or outcome.status
        raise TierUnavailable(
            f"Tier3 could not copy the working directory's files into the guest ({why}); "
            "raise the run's disk limit, or move files out of the working directory"
        )
