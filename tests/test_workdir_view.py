"""The seed's working directory at every tier: a user puts ``process.py`` in
``working_directory`` and a run's ``python3 process.py`` finds it, while the run's own
writes stay private, the working directory is never written, and neither the other
runs' directories beside it nor what other users may not read is shown."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from pathlib import Path

import pytest

from symbi_jupyter import ResourceLimits, SecurityTier
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.native import host_tag
from symbi_jupyter.sandboxes.supervisor import workdir_view

from .helpers import need, wait_until

NONE, TIER1, TIER2, TIER3 = SecurityTier
NAMES = {NONE: "none", TIER1: "docker", TIER2: "gvisor", TIER3: "microvm"}

PROCESS_PY = 'print("processed", open("data/input.txt").read().strip())\n'
# Reads the working directory's files by relative paths, as the seed's agent does.
FINDS = """\
import os, subprocess
print(sorted(os.listdir(".")))
print(open("process.py").readline().strip())
subprocess.run(["python3", "process.py"], check=True)
"""
# Writes where a run might: a shown file, into a shown directory, the working
# directory itself, and a file of its own.
WRITES = """\
import os
for path in ("process.py", "data/new.txt", {workdir!r} + "/new.txt"):
    try:
        with open(path, "a") as f:
            f.write("changed")
        print("wrote", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
with open("mine.txt", "w") as f:
    f.write("mine")
print(open("mine.txt").read())
"""
# What a shown name would give, for names that must not be there.
HIDDEN_NAMES = (
    "kept-4026531836-1-abcdefgh",
    "run-4026531836-1-abcdefgh",
    "private.txt",
    "theirs.txt",
    "link",
    "fifo",
)
LOOKS = """\
import os
names = set(os.listdir("."))
print(sorted(names & set({names!r})))
for name in {names!r}:
    print(name, os.path.lexists(name))
print(open("process.py").readline().strip())
"""


def populate(workdir: Path) -> None:
    """The user's files, and beside them what no run may be shown."""
    (workdir / "process.py").write_text(PROCESS_PY)
    (workdir / "data").mkdir()
    (workdir / "data" / "input.txt").write_text("hello\n")
    for kept in HIDDEN_NAMES[:2]:  # the run directories of other runs, as a host has them
        (workdir / kept).mkdir()
        (workdir / kept / "secret.txt").write_text("another run's\n")
    (workdir / "private.txt").write_text("root's own\n")
    (workdir / "private.txt").chmod(0o600)
    (workdir / "theirs.txt").write_text("another user's\n")
    os.chown(workdir / "theirs.txt", 12345, 12345)
    (workdir / "link").symlink_to("/etc/hostname")
    os.mkfifo(workdir / "fifo")
    for path in (workdir / "process.py", workdir / "data", workdir / "data" / "input.txt"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def snapshot(workdir: Path) -> dict[str, bytes | None]:
    """Every file and directory of ``workdir`` and what each file holds, but the run
    directories this process's runs make there (outside /tmp, on the host's disk)."""
    ours = f"run-{host_tag()}-"
    return {
        str(p.relative_to(workdir)): None
        if p.is_dir() or p.is_symlink() or stat.S_ISFIFO(p.lstat().st_mode)
        else p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if not p.relative_to(workdir).parts[0].startswith(ours)
    }


def check_finds(res, tier: SecurityTier) -> None:
    assert res.success, res.stderr
    listing, first, processed = res.stdout.splitlines()
    assert {"data", "process.py"} <= set(eval(listing))
    assert first == PROCESS_PY.splitlines()[0]
    assert processed == "processed hello"
    how = {
        NONE: "linked into the run directory",
        TIER1: "mounted read-only in /workspace",
        TIER2: "mounted read-only in /workspace",
        TIER3: "copied into /workspace",
    }[tier]
    assert res.enforcement["working_directory"].startswith(f"2 entries, {how}")


def check_writes(res, workdir: Path, before: dict) -> None:
    assert res.success, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["refused"] * 3, res.stdout
    assert lines[3] == "mine"
    assert snapshot(workdir) == before  # nothing of the host's changed, nothing added


def check_hidden(res) -> None:
    assert res.success, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1:-1] == [f"{name} False" for name in HIDDEN_NAMES]
    assert lines[-1] == PROCESS_PY.splitlines()[0]


# -- tier None ------------------------------------------------------------------------
@pytest.fixture(params=["/tmp", "/srv"], ids=["in-tmp", "outside-tmp"])
def shared(request):
    """A working directory as the seed's: root's, with the user's files. In /tmp (the
    default's place, where runs see the host's /tmp through an overlay) and outside it
    (where a waiting run's directory is on the host's disk, beside the user's files)."""
    path = Path(request.param) / f"symbi-view-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o711)
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def native(shared: Path, audit_path: Path):
    need(os.geteuid() == 0, "the run's own uid (as root) is what keeps the host's files")
    o = SandboxOrchestrator(
        allow_native_execution=True, working_directory=str(shared), audit_log_path=str(audit_path)
    )
    yield o
    o.close()


def test_tier_none_finds_the_working_directorys_files(native, shared):
    # Nothing to show, nothing said (the usual run's enforcement stays as it was).
    assert "working_directory" not in native.execute_code(NONE, "pass").enforcement
    populate(shared)
    check_finds(native.execute_code(NONE, FINDS), NONE)
    # The seed's command, by a shell.
    res = native.execute_code(NONE, "python3 process.py", language="bash")
    assert res.stdout == "processed hello\n", res.stderr


def test_tier_none_writes_stay_private_or_are_refused(native, shared):
    populate(shared)
    before = snapshot(shared)
    res = native.execute_code(NONE, WRITES.format(workdir=str(shared)))
    check_writes(res, shared, before)
    assert "refused process.py PermissionError" in res.stdout


def test_tier_none_shows_no_other_run_and_nothing_others_may_not_read(native, shared):
    populate(shared)
    res = native.execute_code(NONE, LOOKS.format(names=HIDDEN_NAMES))
    check_hidden(res)


def test_tier_none_does_not_show_a_run_going_on_beside_it(native, shared):
    """A run started first, still running: its directory is in the working directory
    (on the host's disk, outside /tmp); the second run is not shown it."""
    populate(shared)
    started = threading.Event()
    first: dict = {}

    def on_output(stream: str, chunk: bytes) -> None:
        first.setdefault("cwd", chunk.decode().strip())
        started.set()

    def run_first() -> None:
        first["result"] = native.execute_code(
            NONE,
            "import os, time\nprint(os.getcwd(), flush=True)\ntime.sleep(60)",
            limits=ResourceLimits(timeout_seconds=10),
            on_output=on_output,
        )

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert started.wait(30)
        name = os.path.basename(first["cwd"])
        res = native.execute_code(
            NONE,
            f"import os\nprint(sorted(os.listdir('.')))\nprint(os.path.lexists({name!r}))",
        )
    finally:
        thread.join()
    listing, there = res.stdout.splitlines()
    assert {"data", "process.py"} <= set(eval(listing)), res.stderr
    assert not [n for n in eval(listing) if n.startswith(("run-", "kept-"))]
    assert there == "False"


def test_tier_none_shows_none_of_too_many_and_says_so(native, shared):
    for n in range(workdir_view.MAX_ENTRIES + 1):
        (shared / f"f{n:03}").write_text("x")
        (shared / f"f{n:03}").chmod(0o644)
    res = native.execute_code(NONE, "import os\nprint(os.path.exists('f000'))")
    assert res.stdout == "False\n"
    assert res.enforcement["working_directory"].startswith(
        f"not shown: more than {workdir_view.MAX_ENTRIES} entries"
    )


def test_a_working_directory_not_of_root_or_the_host_shows_nothing(tmp_path):
    """What a run that may write the working directory's parent could put in its place
    (a directory of its own uid, with a process.py of its own) is shown to no run."""
    need(os.geteuid() == 0, "making a directory of another uid needs root")
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o755)
    (planted / "process.py").write_text("print('planted')\n")
    (planted / "process.py").chmod(0o644)
    for path in (planted, planted / "process.py"):
        os.chown(path, 12345, 12345)
    assert workdir_view.entries(str(planted)) == []
    os.chown(planted, 0, 0)
    assert workdir_view.entries(str(planted)) == []  # and its files are still not root's


# -- Tier1, Tier2 ---------------------------------------------------------------------
@pytest.fixture
def root_workdir():
    path = Path("/tmp") / f"symbi-view-{uuid.uuid4().hex[:10]}"
    path.mkdir(mode=0o711)
    path.chmod(0o711)
    populate(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def corch(root_workdir, audit_path):
    o = SandboxOrchestrator(working_directory=str(root_workdir), audit_log_path=str(audit_path))
    yield o
    o.close()


@pytest.fixture(params=[TIER1, TIER2], ids=lambda t: NAMES[t])
def container_tier(request, corch) -> SecurityTier:
    availability = corch.sandbox(request.param).availability()
    need(availability.ok, availability.reason, tier=NAMES[request.param])
    return request.param


def test_containers_find_the_working_directorys_files(corch, container_tier):
    check_finds(corch.execute_code(container_tier, FINDS), container_tier)
    res = corch.execute_code(container_tier, "python3 process.py", language="bash")
    assert res.stdout == "processed hello\n", res.stderr


def test_containers_writes_stay_private_or_are_refused(corch, container_tier, root_workdir):
    before = snapshot(root_workdir)
    res = corch.execute_code(container_tier, WRITES.format(workdir=str(root_workdir)))
    check_writes(res, root_workdir, before)


def test_containers_show_no_other_run_and_nothing_others_may_not_read(corch, container_tier):
    check_hidden(corch.execute_code(container_tier, LOOKS.format(names=HIDDEN_NAMES)))


def test_a_pooled_container_is_not_taken_for_another_listing(corch, root_workdir):
    """The mounts are made when a container is created, before its cell: one made
    before a file was added is not used for a run that must see it."""
    availability = corch.sandbox(TIER1).availability()
    need(availability.ok, availability.reason, tier="docker")
    assert corch.execute_code(TIER1, "pass").success  # leaves one pooled
    (root_workdir / "later.txt").write_text("added\n")
    (root_workdir / "later.txt").chmod(0o644)
    res = corch.execute_code(TIER1, "print(open('later.txt').read().strip())")
    assert res.stdout == "added\n", res.stderr


# -- Tier3 ----------------------------------------------------------------------------
@pytest.fixture
def vm(corch, tmp_path: Path):
    sandbox = corch.sandbox(TIER3)
    sandbox.acceleration = "tcg"
    sandbox.run_root = str(tmp_path)
    availability = sandbox.availability()
    need(availability.ok, availability.reason, tier="microvm")
    yield corch
    corch.close()
    assert wait_until(lambda: not list(tmp_path.glob("symbi-vm-*")), 30)


def test_tier3_finds_a_copy_of_the_working_directorys_files(vm, root_workdir):
    res = vm.execute_code(TIER3, FINDS)
    check_finds(res, TIER3)
    assert "a snapshot" in res.enforcement["working_directory"]
    before = snapshot(root_workdir)
    check_writes(
        vm.execute_code(TIER3, WRITES.format(workdir=str(root_workdir))), root_workdir, before
    )
    check_hidden(vm.execute_code(TIER3, LOOKS.format(names=HIDDEN_NAMES)))


def test_tier3_copies_nothing_past_its_limit_and_says_so(vm, root_workdir):
    vm.sandbox(TIER3).working_directory_copy_mb = 0.001  # about 1 KiB
    (root_workdir / "data" / "big.bin").write_bytes(b"x" * 4096)
    (root_workdir / "data" / "big.bin").chmod(0o644)
    res = vm.execute_code(TIER3, "import os\nprint(os.path.exists('process.py'))")
    assert res.stdout == "False\n", res.stderr
    assert res.enforcement["working_directory"].startswith("not copied: more than")


def test_tier3_kernel_session_finds_the_copy(vm):
    session = vm.open_session(TIER3, ResourceLimits(timeout_seconds=60))
    try:
        said: list[str] = []
        outcome = session.execute(
            "print(open('process.py').readline().strip())",
            lambda m: said.append(m.get("text", "")),
        )
        assert outcome.status == "ok", outcome.reply
        assert "".join(said) == PROCESS_PY.splitlines()[0] + "\n"
        assert "copied into /workspace" in session.handle.enforcement["working_directory"]
    finally:
        session.close()
