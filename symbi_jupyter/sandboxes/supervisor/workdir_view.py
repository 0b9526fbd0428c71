"""What a run sees of the working directory, at every tier: the seed's
``working_directory`` is "where code runs", so ``python3 process.py`` must find the
``process.py`` a user put there, while each run keeps a private directory of its own.

Shown are the working directory's top-level files and directories that belong to its
owner and that any user may read (a file readable by others, a directory readable
and searchable by others). Never shown: links, devices, sockets and FIFOs; entries of
other users (a directory with the sticky bit lets anyone add some); the sandbox's own
run directories (``run-*``, ``kept-*``), which live there too; and the names a run
uses itself (:data:`RESERVED`). Tier None links them into the run's directory, the
container tiers bind them read-only into ``/workspace``, Tier3 copies them into the
guest. Only the top level is chosen: what a shown directory holds is seen as it is.

Standard library only: the native supervisor imports it.
"""

from __future__ import annotations

import os
import stat

#: A run's own names in its directory, at one tier or another: the code file of each
#: language, its temporary directory, the containers' line-buffering module.
RESERVED = frozenset({"cell.py", "cell.sh", "cell.js", "tmp", ".symbi"})
#: The run directories, live or kept, that share the working directory.
SANDBOX_PREFIXES = ("run-", "kept-")
#: The most entries shown (each is a link, a mount or a copy per run); with more,
#: none is, and the run's enforcement says why.
MAX_ENTRIES = 256
KEY = "working_directory"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OTHERS_READ = stat.S_IROTH
_OTHERS_LIST = stat.S_IROTH | stat.S_IXOTH


def shown_entry(st: os.stat_result, owner: int) -> bool:
    """Whether an entry (its ``lstat``) of a directory that ``owner`` owns is shown."""
    return st.st_uid == owner and others_may_read(st)


def others_may_read(st: os.stat_result) -> bool:
    """Whether ``st`` (an ``lstat``) is a file any user may read, or a directory any
    user may list and enter; never a link or a special file."""
    if stat.S_ISREG(st.st_mode):
        return st.st_mode & _OTHERS_READ == _OTHERS_READ
    if stat.S_ISDIR(st.st_mode):
        return st.st_mode & _OTHERS_LIST == _OTHERS_LIST
    return False  # a link, a device, a socket, a FIFO


def entries(workdir: str) -> list[str] | None:
    """The names of ``workdir``'s entries a run is shown, sorted; None where there are
    more than :data:`MAX_ENTRIES` (then none is). Read through a descriptor, without
    following a link."""
    dirfd = os.open(workdir, _DIR_FLAGS)
    try:
        owner = os.fstat(dirfd).st_uid
        if owner not in (0, os.geteuid()):
            # Not the directory the host checked (a run that may write its parent
            # could have put its own there): one run's files must not reach the next.
            return []
        names = []
        with os.scandir(dirfd) as listing:
            for entry in listing:
                name = entry.name
                if name in RESERVED or name.startswith(SANDBOX_PREFIXES):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked
                if shown_entry(st, owner):
                    names.append(name)
                    if len(names) > MAX_ENTRIES:
                        return None
    finally:
        os.close(dirfd)
    return sorted(names)


def note(names: list[str] | None, how: str) -> dict[str, str]:
    """The enforcement note of a run shown ``names`` (from :func:`entries`) ``how``;
    nothing when the working directory has nothing to show."""
    if names is None:
        return {
            KEY: f"not shown: more than {MAX_ENTRIES} entries; put what runs need "
            "in a directory of it"
        }
    if not names:
        return {}
    count = f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"
    return {KEY: f"{count}, {how}"}
