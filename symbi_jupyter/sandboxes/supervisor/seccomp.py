"""A seccomp filter for native runs: the system calls a run never needs, refused.

Tier None isolates nothing from the host's kernel (the seed's "no isolation"); this
filter only takes away what would let one run reach another or widen the kernel's
surface: new user namespaces (``unshare``/``clone`` with ``CLONE_NEWUSER``; ``clone3``
answers ENOSYS so that the C library falls back to ``clone``), tracing and reading
other processes' memory, eBPF, the kernel keyring, io_uring, performance counters,
userfaultfd, modules, kexec, namespaces of other processes, and a few calls only an
administrator makes. Each answers EPERM. x86-64 only; elsewhere nothing is filtered and
the enforcement note says so.
"""

from __future__ import annotations

import ctypes
import platform
import struct

from .proctree import libc

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM, ENOSYS = 1, 38

#: x86-64 numbers of the calls refused outright.
DENIED = {
    "ptrace": 101,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "bpf": 321,
    "perf_event_open": 298,
    "userfaultfd": 323,
    "keyctl": 250,
    "add_key": 248,
    "request_key": 249,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "setns": 308,
    "pivot_root": 155,
    "open_by_handle_at": 304,
    "acct": 163,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
}
CLONE, UNSHARE, CLONE3 = 56, 272, 435

# BPF instruction classes and fields.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
# struct seccomp_data: nr at 0, arch at 4, args[0] (low word, little-endian) at 16.
_NR, _ARCH, _ARG0 = 0, 4, 16


def supported() -> bool:
    return platform.machine() == "x86_64"


def _program() -> list[tuple[int, int, int, int]]:
    """The filter, as (code, jt, jf, k) instructions."""
    allow = (_RET_K, 0, 0, SECCOMP_RET_ALLOW)
    deny = (_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM)
    numbers = sorted(DENIED.values())
    prog = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        deny,  # another ABI (i386 through int 0x80): its numbers differ
        (_LD_W_ABS, 0, 0, _NR),
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),
        deny,  # the x32 ABI
    ]
    # Each denied number: on a match jump to the deny at the end of this list.
    remaining = len(numbers)
    for n in numbers:
        remaining -= 1
        prog.append((_JEQ_K, remaining + 3, 0, n))
    prog += [
        (_JEQ_K, 3, 0, CLONE3),
        (_JEQ_K, 3, 0, CLONE),
        (_JEQ_K, 2, 5, UNSHARE),
        deny,  # a denied number
        (_RET_K, 0, 0, SECCOMP_RET_ERRNO | ENOSYS),  # clone3: its flags are out of reach
        (_LD_W_ABS, 0, 0, _ARG0),  # clone, unshare: their flags
        (_JSET_K, 0, 1, CLONE_NEWUSER),
        deny,
        allow,
    ]
    return prog


def install() -> None:
    """Install the filter on this process (no_new_privs must be set); it holds across
    exec and for every child. Raises OSError if the kernel refuses it."""
    prog = _program()
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.addressof(buf))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter refused")
