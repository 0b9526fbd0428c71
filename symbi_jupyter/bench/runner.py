"""A bench run from start to end: two orchestrators made like the caller's (one with
nothing prepared in advance, one as configured), each tier's cells through their
public ``execute_code``, its estimate beforehand and its progress while it runs."""

from __future__ import annotations

import contextlib
import copy
import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any

from traitlets.config import Config

from ..errors import SymbiError
from ..limits import ResourceLimits
from ..orchestrator import SandboxOrchestrator
from ..tiers import SecurityTier
from . import workloads
from .host import host_facts
from .measure import Spread, TimedCell, time_cell
from .plan import Plan, Progress, StepCosts, say_estimate, step_costs
from .report import BenchReport, TierFigures

#: What nothing prepared in advance means, per backend: no pool, no waiting interpreter.
COLD: dict[str, dict[str, Any]] = {
    "NativeSandbox": {"prestart_interpreter": False},
    "DockerSandbox": {"pool_size": 0},
    "GVisorSandbox": {"pool_size": 0},
    "MicroVMSandbox": {"pool_size": 0},
}
#: Wall-clock limit of each bench cell (lowered to the operator's ceiling).
CELL_TIMEOUT_SECONDS = 120.0


def derived(
    base: SandboxOrchestrator, overrides: dict[str, dict[str, Any]] | None = None
) -> SandboxOrchestrator:
    """An orchestrator under ``base``'s policy (its traits and configuration), with the
    backends' ``overrides`` on top."""
    # A deep copy: merging shares the sections, and base's (the shell's) must not change.
    config = copy.deepcopy(base.config)
    config.merge(Config(overrides or {}))
    values = {name: getattr(base, name) for name in base.traits(config=True)}
    return SandboxOrchestrator(config=config, native_refusal=base.native_refusal, **values)


def _detail(tier: SecurityTier, details: dict[str, Any]) -> str | None:
    """What runs the tier here, in words, before any result says it."""
    if tier is SecurityTier.NONE:
        return f"a process on this host (cgroup {details.get('cgroup', '?')})"
    if tier is SecurityTier.TIER3:
        return details.get("vmm")
    return "runsc" if tier is SecurityTier.TIER2 else "runc"


class BenchRun:
    """One run of the bench over ``tiers`` through orchestrators made like ``base``."""

    def __init__(
        self,
        base: SandboxOrchestrator,
        tiers: list[SecurityTier],
        plan: Plan,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.tiers = sorted(set(tiers))
        self.plan = plan
        self.progress = progress
        self.cold = derived(base, COLD)
        self.warm = derived(base)
        self.figures = {tier: TierFigures(tier) for tier in self.tiers}
        timeout = min(CELL_TIMEOUT_SECONDS, base.max_execution_time_seconds)
        self.limits = ResourceLimits(timeout_seconds=timeout)
        self._started = time.monotonic()
        self._weights: dict[SecurityTier, StepCosts] = {}
        self._total = self._done = 0.0

    # ------------------------------------------------------------------ plan
    def check(self) -> list[SecurityTier]:
        """Which tiers can run here under this policy; the others get their reason."""
        ready = []
        for tier in self.tiers:
            fig = self.figures[tier]
            try:
                self.cold.admit_tier(tier, source="symbi-jupyter bench")
                availability = self.cold.sandbox(tier).availability()
            except SymbiError as exc:
                fig.unavailable(f"{type(exc).__name__}: {exc}")
                continue
            if not availability.ok:
                fig.unavailable(availability.reason)
                continue
            fig.detail = _detail(tier, availability.details)
            ready.append(tier)
        return ready

    def estimate(self, ready: list[SecurityTier]) -> float:
        """Seconds the measurements of ``ready`` should take on a 2-core machine."""
        tier3 = self.figures.get(SecurityTier.TIER3)
        kvm = tier3 is not None and (tier3.detail or "").endswith("KVM")
        self._weights = {tier: step_costs(tier, self.plan, kvm) for tier in ready}
        self._total = sum(self._weights[tier].total for tier in ready)
        return self._total

    def _step(self, step: str, tier: SecurityTier | None, cost: float) -> None:
        if self.progress is not None:
            elapsed = time.monotonic() - self._started
            done = min(self._done / self._total, 0.99) if self._total else 0.0
            # The estimate, corrected by how this machine has kept to it so far.
            pace = elapsed / self._done if self._done > 1 else 1.0
            left = max(self._total - self._done, 0.0) * pace
            self.progress(Progress(step, tier, done, elapsed, left))
        self._done += cost

    # ------------------------------------------------------------------ measuring
    def run(self, ready: list[SecurityTier]) -> BenchReport:
        """Measure ``ready`` (from :meth:`check`), tier by tier, then the throughput
        rounds, interleaved so every tier sees the same machine load."""
        date = datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
        with workloads.host_side() as host:
            for tier in ready:
                self._guarded(tier, self._startup, tier)
                self._guarded(tier, self._memory, tier)
                self._guarded(tier, self._isolation, tier, host)
        # Nothing made in advance may wait (and run) beside the throughput rounds.
        self.warm.close()
        self._throughput([t for t in ready if self.figures[t].available])
        self._overheads()
        facts = host_facts(self.cold, self.figures)
        return BenchReport(
            tiers=self.figures,
            host=facts,
            date=date,
            quick=self.plan.quick,
            runs=self.plan.runs,
            scale=self.plan.scale,
            seconds=time.monotonic() - self._started,
        )

    def _guarded(self, tier: SecurityTier, measure: Callable[..., None], *args: Any) -> None:
        """Run ``measure``; a refusal or a tier that fails on the way makes the row say
        why (never a silent gap, never another tier in its place)."""
        fig = self.figures[tier]
        if not fig.available:
            return
        try:
            measure(*args)
        except SymbiError as exc:
            fig.unavailable(f"failed while measuring: {type(exc).__name__}: {exc}")

    def _cell(self, orch: SandboxOrchestrator, tier: SecurityTier, code: str) -> TimedCell:
        timed = time_cell(orch, tier, code, self.limits)
        if timed.result.sandbox_detail:
            self.figures[tier].detail = timed.result.sandbox_detail
        return timed

    def _failed(self, tier: SecurityTier, what: str, timed: TimedCell) -> bool:
        """Whether the cell failed; if so the row's notes say how."""
        r = timed.result
        if r.success:
            return False
        why = f"stopped by {r.killed_by}" if r.killed_by else f"exit status {r.exit_code}"
        tail = (r.stderr.strip().splitlines() or [""])[-1][:200]
        self.figures[tier].notes.append(f"{what}: the cell failed ({why}) {tail}".rstrip())
        return True

    def _startup(self, tier: SecurityTier) -> None:
        fig = self.figures[tier]
        costs = self._weights[tier]
        cold: list[float] = []
        for i in range(self.plan.runs):
            self._step(f"start-up, cold {i + 1}/{self.plan.runs}", tier, costs.cold)
            timed = self._cell(self.cold, tier, workloads.TRIVIAL)
            if self._failed(tier, "start-up (cold)", timed):
                return
            cold.append(timed.seconds)
        fig.cold = Spread.of(cold)
        # The warm path's sandbox is made after the run before it: wait for that (about
        # a cold start) so each sample finds one ready, as a cell after a pause does.
        pause = 1.5 * fig.cold.median + 0.05
        self._step("start-up, warm: first run", tier, 0)
        self._cell(self.warm, tier, workloads.TRIVIAL)  # teaches and fills the pool
        warm: list[float] = []
        prepared = 0
        attempts = 3
        for i in range(self.plan.runs):
            self._step(f"start-up, warm {i + 1}/{self.plan.runs}", tier, costs.warm)
            for attempt in range(attempts):
                time.sleep(pause * (attempt + 1))
                timed = self._cell(self.warm, tier, workloads.TRIVIAL)
                if self._failed(tier, "start-up (warm)", timed):
                    return
                if timed.prepared:
                    break
            else:
                # Nothing is prepared in advance as configured (a pool of 0, say):
                # the warm path is then the cold one, and waiting longer changes nothing.
                attempts = 1
            prepared += timed.prepared
            warm.append(timed.seconds)
        fig.warm = Spread.of(warm)
        fig.warm_prepared = (prepared, len(warm))
        if prepared < len(warm):
            fig.notes.append(
                f"start-up (warm): {len(warm) - prepared} of {len(warm)} warm samples "
                "found nothing prepared in advance and paid a cold start"
            )

    def _memory(self, tier: SecurityTier) -> None:
        fig = self.figures[tier]
        cost = self._weights[tier].idle
        peaks: list[float] = []
        methods = set()
        for i in range(self.plan.memory_runs):
            self._step(f"memory {i + 1}/{self.plan.memory_runs}", tier, cost)
            timed = self._cell(self.cold, tier, workloads.IDLE)
            if self._failed(tier, "memory", timed):
                return
            if timed.result.peak_memory_bytes is None:
                fig.notes.append(
                    "memory: the host has no figure for this sandbox "
                    f"({timed.result.enforcement.get('measurement', 'not measured')})"
                )
                return
            peaks.append(float(timed.result.peak_memory_bytes))
            methods.add(timed.result.memory_method or "?")
        fig.memory_peak = Spread.of(peaks)
        fig.memory_method = ", ".join(sorted(methods))

    def _isolation(self, tier: SecurityTier, host: dict[str, Any]) -> None:
        fig = self.figures[tier]
        self._step("isolation", tier, self._weights[tier].idle)
        timed = self._cell(self.cold, tier, workloads.isolation_code(host))
        if self._failed(tier, "isolation", timed):
            return
        answers = workloads.isolation_answers(timed.result.stdout)
        if answers is None:
            fig.notes.append("isolation: the experiments gave no answer")
            return
        fig.isolation = answers
        fig.kernel_words = workloads.kernel_words(timed.result.stdout)

    def _throughput(self, ready: list[SecurityTier]) -> None:
        code = workloads.suite_code(self.plan.scale)
        for round_ in range(self.plan.runs):
            for tier in ready:
                fig = self.figures[tier]
                if not fig.available:
                    continue
                step = f"throughput {round_ + 1}/{self.plan.runs}"
                self._step(step, tier, self._weights[tier].round)
                try:
                    timed = self._cell(self.cold, tier, code)
                except SymbiError as exc:
                    fig.unavailable(f"failed while measuring: {type(exc).__name__}: {exc}")
                    continue
                if self._failed(tier, "throughput", timed):
                    continue
                seconds = workloads.suite_seconds(timed.result.stdout)
                if seconds is None:
                    fig.notes.append("throughput: the suite gave no figures")
                    continue
                for name, value in seconds.items():
                    fig.suite_seconds.setdefault(name, []).append(value)
                # Nothing of this run may still be working when the next one starts.
                time.sleep(0.05)
        self._ratios()

    def _ratios(self) -> None:
        base = self.figures.get(SecurityTier.NONE)
        complete = {
            tier: fig
            for tier, fig in self.figures.items()
            if fig.available and len(fig.suite_seconds) == len(workloads.BASE_COUNTS)
        }
        if base is None or SecurityTier.NONE not in complete:
            why = (
                "tier None was not measured (--tiers)"
                if base is None
                else f"tier None has no figures ({base.reason or '; '.join(base.notes)})"
            )
            for fig in complete.values():
                fig.notes.append(f"throughput: no baseline, {why}")
            return
        none = {name: Spread.of(v).median for name, v in base.suite_seconds.items()}
        for tier, fig in complete.items():
            if tier is SecurityTier.NONE:
                fig.throughput = dict.fromkeys(none, 1.0)
                continue
            fig.throughput = {
                name: none[name] / Spread.of(values).median
                for name, values in fig.suite_seconds.items()
            }

    def _overheads(self) -> None:
        base = self.figures.get(SecurityTier.NONE)
        baseline = base.memory_peak.median if base and base.memory_peak else None
        for fig in self.figures.values():
            if fig.memory_peak is None:
                continue
            if baseline is None:
                fig.notes.append("memory: no overhead without tier None's figure to subtract")
                continue
            fig.memory_overhead_bytes = (
                0.0 if fig.tier is SecurityTier.NONE else fig.memory_peak.median - baseline
            )

    def close(self) -> None:
        self.cold.close()
        self.warm.close()


def run_bench(
    base: SandboxOrchestrator,
    tiers: list[SecurityTier] | None = None,
    *,
    quick: bool = False,
    runs: int | None = None,
    scale: float | None = None,
    progress: Callable[[Progress], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> BenchReport:
    """Measure the seed's table for ``tiers`` (default: all four) on this host, through
    orchestrators under ``base``'s policy. ``announce`` hears what will be measured and
    how long it should take, before anything runs; ``progress`` each step."""
    plan = Plan.make(quick, runs, scale)
    with _closing(BenchRun(base, list(tiers or SecurityTier), plan, progress)) as bench:
        ready = bench.check()
        seconds = bench.estimate(ready)
        if announce is not None:
            announce(_announcement(bench, ready, seconds))
        return bench.run(ready)


@contextlib.contextmanager
def _closing(bench: BenchRun) -> Iterator[BenchRun]:
    try:
        yield bench
    finally:
        bench.close()


def _announcement(bench: BenchRun, ready: list[SecurityTier], seconds: float) -> str:
    p = bench.plan
    words = f"symbi bench ({'quick' if p.quick else 'full'}): "
    words += ", ".join(t.value for t in ready) or "no tier can run"
    skipped = [t.value for t in bench.tiers if t not in ready]
    if skipped:
        words += f" ({', '.join(skipped)} unavailable: the table says why)"
    if ready:
        runs = f"{p.runs} run{'s' if p.runs > 1 else ''}"
        words += f", {runs} each; {say_estimate(seconds)} on a 2-core machine"
    return words
