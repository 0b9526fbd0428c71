"""Tier None: native execution on the host, under real limits.

Each run gets a private directory, a clean environment, rlimits, and (where the host
allows it) its own cgroups; a small supervisor process (:mod:`..supervisor`) forks the
code, enforces the wall clock and kills the whole process tree afterwards.

Split by what each module holds, so that none grows past the project's size limit:
``sandbox`` (:class:`NativeSandbox`: its traits, the supervisor process, a run from
request to result), ``spec`` (a request as the supervisor's run spec: limits,
environment, volume binds), ``results`` (the monitor's exit report as an
ExecutionResult, a kept run directory) and ``worker_handle`` (a kernel's worker on the
host). Following a run from the host is ``sandboxes/_follow.py``. Import from
``symbi_jupyter.sandboxes.native`` itself: the entry point ``none`` names it, and the
modules are its layout, not its interface.
"""

from __future__ import annotations

# host_tag names the run directories: importable from here, as before the split.
from ..supervisor.proctree import host_tag
from .sandbox import NativeSandbox
from .spec import MiB, native_environment

__all__ = ["MiB", "NativeSandbox", "host_tag", "native_environment"]
