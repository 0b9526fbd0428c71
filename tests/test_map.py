"""orch.map: many snippets at one tier, in input order, a bounded number at once, with
real sandboxes (tier None, and Tier1 where Docker is available).

The tests that need to know what runs when hold each item at a gate: the item takes
its start time, blocks SIGUSR1 and waits until one is pending; the test sees from /proc which items
wait (their environment names them, their signal mask shows the wait) and releases
them one at a time. Nothing depends on how fast anything runs."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest
from traitlets.config import Config

from symbi_jupyter import (
    ConfigError,
    MapInterrupted,
    PolicyViolation,
    ResourceLimits,
    SecurityTier,
)
from symbi_jupyter.audit import verify
from symbi_jupyter.orchestrator import SandboxOrchestrator
from symbi_jupyter.sandboxes.docker import HOST_LABEL, host_tag

from .helpers import need, wait_until

ITEM = "SYMBI_MAP_ITEM"
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)

# Prints "<index> <start> <end>" once released by SIGUSR1 (its start taken first, so an
# item the test sees waiting has started). Polled, not sigwait(): the kernel unblocks
# the awaited signal while sigwait() sleeps, so the mask would not show the wait.
GATED = """\
import os, signal, time
start = time.time()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
while signal.SIGUSR1 not in signal.sigpending():
    time.sleep(0.01)
print(os.environ["SYMBI_MAP_ITEM"].rsplit("-", 1)[1], start, time.time())
"""


@pytest.fixture
def dorch(workdir: Path, audit_path: Path):
    """A Tier1 orchestrator; no pool (each item's own environment would make spares no
    later run takes)."""
    o = SandboxOrchestrator(
        config=Config({"DockerSandbox": {"pool_size": 0}}),
        working_directory=str(workdir),
        audit_log_path=str(audit_path),
    )
    availability = o.sandbox(SecurityTier.TIER1).availability()
    need(availability.ok, availability.reason, tier="docker")
    yield o
    o.close()


@pytest.fixture(params=["none", "docker"])
def tiered(request, orch, workdir, audit_path):
    """(orchestrator, tier): tier None, then Tier1."""
    if request.param == "none":
        return orch, SecurityTier.NONE
    return request.getfixturevalue("dorch"), SecurityTier.TIER1


def records(audit_path: Path) -> list[dict]:
    if not audit_path.exists():
        return []
    return [json.loads(line) for line in audit_path.read_text().splitlines()]


def run_records(audit_path: Path) -> list[dict]:
    """The audit records of runs (not of a refused map)."""
    return [r for r in records(audit_path) if r.get("event") != "map"]


def items_in_proc(token: str) -> dict[int, tuple[int, bool]]:
    """Item index -> (pid, waiting at its gate) of every interpreter running an item
    of this test (the interpreter, not a container's init, which has its environment
    too)."""
    found: dict[int, tuple[int, bool]] = {}
    mark = f"{ITEM}={token}-".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                program = f.read().split(b"\0")[0]
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        ours = [e for e in env if e.startswith(mark)]
        if not ours or b"python" not in os.path.basename(program):
            continue
        blocked = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
        waiting = bool(int(blocked.split()[1], 16) & SIGUSR1_BIT)
        found[int(ours[0][len(mark) :])] = (int(name), waiting)
    return found


def gated_items(token: str, n: int) -> list[tuple[str, dict[str, str]]]:
    return [(GATED, {ITEM: f"{token}-{i}"}) for i in range(n)]


class Gatekeeper(threading.Thread):
    """Releases the waiting items one at a time, always the highest index first,
    once ``width`` of them (or all that remain) wait; records the most seen running
    at once. Whatever goes wrong, it releases everything, so the map ends."""

    def __init__(self, token: str, n: int, width: int) -> None:
        super().__init__(daemon=True)
        self.token, self.n, self.width = token, n, width
        self.most = 0
        self.order: list[int] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while len(self.order) < self.n:
                self.release_one(min(self.width, self.n - len(self.order)))
        except BaseException as exc:
            self.error = exc
            while not self.done.wait(0.1):
                for pid, _ in items_in_proc(self.token).values():
                    os.kill(pid, signal.SIGUSR1)

    def look(self) -> dict[int, tuple[int, bool]]:
        seen = items_in_proc(self.token)
        self.most = max(self.most, len(seen))
        return seen

    def release_one(self, expected: int) -> None:
        """Once ``expected`` items wait, release the highest and wait for its end."""

        def enough() -> bool:
            return sum(waiting for _, waiting in self.look().values()) >= expected

        assert wait_until(enough, 60), f"{expected} items never waited together"
        seen = self.look()
        index = max(i for i, (_, waiting) in seen.items() if waiting)
        os.kill(seen[index][0], signal.SIGUSR1)
        self.order.append(index)
        assert wait_until(lambda: index not in self.look(), 60)


def gated_map(orch, tier, n: int, width: int, memory_mb: float | None = None, **kwargs):
    token = uuid.uuid4().hex[:12]
    keeper = Gatekeeper(token, n, width)
    keeper.start()
    try:
        results = orch.map(
            gated_items(token, n),
            tier=tier,
            limits=ResourceLimits(timeout_seconds=120, max_memory_mb=memory_mb),
            progress=False,
            **kwargs,
        )
    finally:
        keeper.done.set()
        keeper.join(10)
    if keeper.error is not None:
        raise keeper.error
    return results, keeper


def intervals(results) -> dict[int, tuple[float, float]]:
    spans = {}
    for res in results:
        index, start, end = res.stdout.split()
        spans[int(index)] = (float(start), float(end))
    return spans


def most_overlapping(spans) -> int:
    """The most intervals that hold one instant (each start is such an instant)."""
    return max(sum(1 for s, e in spans.values() if s <= start < e) for start, _ in spans.values())


# -- order and the bound -----------------------------------------------------------------
def test_results_come_in_input_order_when_later_items_finish_first(tiered, audit_path):
    orch, tier = tiered
    results, keeper = gated_map(orch, tier, 4, 4, concurrency=4)
    assert keeper.order == [3, 2, 1, 0]  # released, so finished, last item first
    assert all(r.success and r.tier is tier for r in results), [str(r) for r in results]
    spans = intervals(results)
    assert list(spans) == [0, 1, 2, 3]  # the results' order: the items'
    ends = [spans[i][1] for i in range(4)]
    assert ends == sorted(ends, reverse=True)  # and each finished before the one above it
    assert [r["outcome"] for r in run_records(audit_path)] == ["success"] * 4
    assert verify(str(audit_path)).ok


def test_no_more_than_concurrency_items_run_at_once(tiered):
    orch, tier = tiered
    results, keeper = gated_map(orch, tier, 5, 2, concurrency=2)
    assert keeper.most == 2  # seen from outside: two at a time, never a third
    spans = intervals(results)
    assert sorted(spans) == [0, 1, 2, 3, 4]
    assert most_overlapping(spans) == 2  # and as the runs themselves timed it


def test_map_concurrency_is_the_default_bound(orch):
    orch.map_concurrency = 1
    results, keeper = gated_map(orch, "none", 3, 1)
    assert keeper.most == 1
    assert most_overlapping(intervals(results)) == 1


def test_the_default_bound_leaves_each_item_its_memory(orch):
    """With no number given, no more run at once than the host's memory holds at the
    items' memory limit: here, all of it for each."""
    host_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1 << 20)
    orch.max_memory_mb = host_mb
    results, keeper = gated_map(orch, "none", 3, 1, memory_mb=host_mb)
    assert keeper.most == 1
    assert most_overlapping(intervals(results)) == 1


def test_map_concurrency_is_validated():
    with pytest.raises(ConfigError, match="map_concurrency must be 0"):
        SandboxOrchestrator(map_concurrency=-1)


# -- failures stay with their item ---------------------------------------------------------
def test_one_items_failure_is_its_own(tiered, audit_path):
    orch, tier = tiered
    results = orch.map(
        [
            "print('ok 0')",
            "x = bytearray(512 << 20)\nprint('survived')",
            "def broken(:\n    pass",
            ("print('ok 3')", {"BAD": "nul\0here"}),
            "print('ok 4')",
        ],
        tier=tier,
        limits=ResourceLimits(max_memory_mb=128),
        progress=False,
    )
    assert len(results) == 5
    assert results[0].success and results[0].stdout == "ok 0\n"
    assert not results[1].success and results[1].killed_by == "memory"
    assert results[1].stdout == ""
    assert results[2].exit_code == 1 and "SyntaxError" in results[2].stderr
    refused = results[3]
    assert not refused.success and refused.stdout == "" and refused.tier is tier
    assert refused.error == "ConfigError: environment variable BAD holds a NUL byte"
    assert "not run: ConfigError" in str(refused)
    assert results[4].success and results[4].stdout == "ok 4\n"
    assert [r.error for r in results] == [None, None, None, refused.error, None]
    # Each item audited as its own run, the refused one as a refusal.
    outcomes = sorted(r["outcome"] for r in run_records(audit_path))
    assert outcomes == ["failed", "refused", "stopped", "success", "success"]
    assert verify(str(audit_path)).ok


# -- what every item shares is refused once, before anything runs ----------------------------
def test_a_tier_the_policy_refuses_is_refused_once_up_front(workdir, audit_path):
    orch = SandboxOrchestrator(working_directory=str(workdir), audit_log_path=str(audit_path))
    try:
        with pytest.raises(PolicyViolation, match="native"):
            orch.map(["print(1)", "print(2)", "print(3)"], tier="none", progress=False)
    finally:
        orch.close()
    (record,) = records(audit_path)
    assert record["event"] == "map" and record["outcome"] == "refused"
    assert record["tier"] == "None" and record["items"] == 3
    assert record["error"].startswith("PolicyViolation")


def test_limits_above_the_ceiling_are_refused_once_up_front(orch, audit_path):
    with pytest.raises(PolicyViolation, match="ceiling"):
        orch.map(
            ["print(1)"] * 4,
            tier="none",
            limits=ResourceLimits(max_memory_mb=orch.max_memory_mb * 2),
            progress=False,
        )
    (record,) = records(audit_path)
    assert record["event"] == "map" and record["outcome"] == "refused" and record["items"] == 4


def test_an_unknown_language_is_refused_once_up_front(orch, audit_path):
    with pytest.raises(ConfigError):
        orch.map(["1", "2"], tier="none", language="cobol", progress=False)
    assert [r["event"] for r in records(audit_path)] == ["map"]


# -- inputs ------------------------------------------------------------------------------
def test_code_env_pairs_add_to_the_shared_env(orch):
    results = orch.map(
        [
            "import os; print(os.environ['A'], os.environ['B'])",
            ("import os; print(os.environ['A'], os.environ['B'])", {"B": "own"}),
            ["import os; print(os.environ['A'], os.environ['C'])", {"C": "list pair"}],
        ],
        tier="none",
        env={"A": "shared", "B": "shared"},
        progress=False,
    )
    assert [r.stdout for r in results] == [
        "shared shared\n",
        "shared own\n",
        "shared list pair\n",
    ]


@pytest.mark.parametrize(
    ("items", "kwargs", "message"),
    [
        ("print(1)", {}, "not str: put a single snippet in a list"),
        (["print(1)", 42], {}, "map item 1 is 42 \\(int\\)"),
        ([("print(1)",)], {}, "map item 0 is \\('print\\(1\\)',\\) \\(tuple\\)"),
        ([("print(1)", "A=1")], {}, "a \\(code, env\\) pair whose env is a dict"),
        (["print(1)"], {"concurrency": 0}, "concurrency=0: give how many"),
        (["print(1)"], {"concurrency": True}, "concurrency=True"),
        (["print(1)"], {"concurrency": 1.5}, "concurrency=1.5"),
        (["print(1)"], {"env": ["A=1"]}, "env must be a dict"),
    ],
)
def test_bad_input_is_a_clear_error_and_runs_nothing(orch, audit_path, items, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        orch.map(items, tier="none", progress=False, **kwargs)
    assert run_records(audit_path) == []


def test_no_items_no_runs(orch, audit_path, capsys):
    assert orch.map(iter([]), tier="none") == []
    assert records(audit_path) == [] and capsys.readouterr().err == ""


# -- the progress bar ----------------------------------------------------------------------
def test_a_progress_bar_on_stderr_when_on(orch, capsys):
    results = orch.map(["print(1)", "print(2)"], tier="none", progress=True)
    assert [r.stdout for r in results] == ["1\n", "2\n"]
    err = capsys.readouterr().err
    assert "symbi map (None)" in err and "2/2" in err


def test_no_progress_bar_when_off(orch, capsys):
    orch.map(["print(1)", "print(2)"], tier="none", progress=False)
    assert capsys.readouterr().err == ""


def test_the_default_is_a_bar_except_under_the_stable_rendering(orch, capsys, monkeypatch):
    orch.map(["print(1)"], tier="none")
    assert "1/1" in capsys.readouterr().err
    monkeypatch.setenv("SYMBI_JUPYTER_STABLE_OUTPUT", "1")
    from symbi_jupyter.render import ResultDisplay

    ResultDisplay.clear_instance()
    orch.map(["print(1)"], tier="none")
    assert capsys.readouterr().err == ""


# -- the stop button -----------------------------------------------------------------------
def test_the_stop_button_stops_every_running_item_and_starts_no_other(tiered, audit_path):
    """A real SIGINT to this process while two items run: both are stopped through
    their runs' own stop path, the others never start, nothing is left."""
    need(threading.current_thread() is threading.main_thread(), "SIGINT goes to the main thread")
    orch, tier = tiered
    token = uuid.uuid4().hex[:12]

    def press_when_two_run() -> None:
        if wait_until(lambda: len(items_in_proc(token)) == 2, 60):
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_when_two_run, daemon=True).start()
    items = [("import time\ntime.sleep(600)", {ITEM: f"{token}-{i}"}) for i in range(5)]
    with pytest.raises(MapInterrupted) as stopped:
        orch.map(
            items,
            tier=tier,
            limits=ResourceLimits(timeout_seconds=20),
            concurrency=2,
            progress=False,
        )
    partial = stopped.value.results
    assert [r.interrupted if r else None for r in partial] == ["ended", "ended", None, None, None]
    assert "2 running were stopped" in str(stopped.value)
    # Stopped, not left running: no process of any item is alive once map returns.
    assert items_in_proc(token) == {}
    assert [r["outcome"] for r in run_records(audit_path)] == ["interrupted"] * 2
    if tier is SecurityTier.TIER1:
        client = orch.sandbox(SecurityTier.TIER1).client()
        orch.close()  # waits for the stopped containers' removal
        left = client.containers.list(
            all=True, filters={"label": f"{HOST_LABEL}={host_tag()}"}, ignore_removed=True
        )
        assert left == []
