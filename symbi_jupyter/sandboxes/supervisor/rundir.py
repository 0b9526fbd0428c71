"""A run's directory: made by root, filled by root, then handed to the run's user.

Root never follows a path the run can write: until :func:`hand_over` the directory
is root's (mode 0700), every file in it is created and changed through descriptors
opened with ``O_NOFOLLOW`` relative to the directory's own descriptor, and the
directory itself changes owner last, when root is done in it.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from .proctree import write_all

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TMP = "tmp"


def open_no_links(path: str, trusted: str = "/") -> int:
    """An ``O_PATH`` descriptor of the directory ``path``, reached from ``trusted`` (a
    prefix of it that only root can change, opened as it is) one component at a time,
    following no link: a path another run may write can be checked by the host and
    swapped before root uses it. Raises OSError (ENOTDIR, ELOOP) at a link."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    if path != trusted and not path.startswith(trusted.rstrip("/") + "/"):
        raise ValueError(f"{path} is not under {trusted}")
    fd = os.open(trusted, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path[len(trusted) :].split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                raise OSError(errno.EINVAL, f"{path}: '..' in a resolved path")
            step = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def make(workdir: str, prefix: str) -> str:
    """A new run directory under ``workdir`` (root's, 0700) with its ``tmp``."""
    path = tempfile.mkdtemp(prefix=prefix, dir=workdir)
    os.mkdir(os.path.join(path, TMP), 0o700)
    return path


def still_ours(path: str) -> bool:
    """Whether ``path`` is still a directory of this process's user (not a link)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()


def write_file(run_dir: str, name: str, data: bytes) -> int:
    """Replace ``run_dir/name`` with a new file holding ``data``; returns a read-only
    descriptor of it (the code, for a started interpreter that must not open the
    path itself once the run could have swapped it)."""
    dirfd = os.open(run_dir, _DIR_FLAGS)
    try:
        _check_ours(dirfd, run_dir)
        try:
            os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o644, dir_fd=dirfd)
    finally:
        os.close(dirfd)
    try:
        write_all(fd, data)
        reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)
    return reader


def link(run_dir: str, target_dir: str, names: list[str]) -> None:
    """In ``run_dir``, a link ``name -> target_dir/name`` for each of ``names`` that
    the run directory does not hold already (the run's own files win). Root makes
    links and never follows them: whoever opens one does so as itself."""
    dirfd = os.open(run_dir, _DIR_FLAGS)
    try:
        _check_ours(dirfd, run_dir)
        for name in names:
            try:
                os.symlink(os.path.join(target_dir, name), name, dir_fd=dirfd)
            except FileExistsError:
                pass
    finally:
        os.close(dirfd)


def hand_over(run_dir: str, names: tuple[str, ...], uid: int, gid: int) -> None:
    """Give ``names`` (files or directories in ``run_dir``) and then ``run_dir`` itself
    to ``uid:gid``. Each through its own descriptor, and the directory last: until
    then no other user can put a link where root will look."""
    dirfd = os.open(run_dir, _DIR_FLAGS)
    try:
        _check_ours(dirfd, run_dir)
        for name in names:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            try:
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
        os.fchown(dirfd, uid, gid)
    finally:
        os.close(dirfd)


def _check_ours(dirfd: int, path: str) -> None:
    st = os.fstat(dirfd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} is no longer this process's own private directory")
