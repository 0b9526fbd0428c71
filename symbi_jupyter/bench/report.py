"""What a bench run found: per tier, its figures or why it has none (:class:`TierFigures`),
the host and the date (:class:`BenchReport`), and the JSON for machines.

The JSON (``symbi-jupyter bench --json``) is an object keyed by tier name (``None``,
``Tier1``, ``Tier2``, ``Tier3``, the tiers measured), plus ``run`` (the date, the host,
the settings and the methods); README's "Measured" section documents every key.
Figures are numbers (seconds, bytes, ratios) or ``null`` where there is none.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..render.options import display_options
from ..tiers import SecurityTier
from .measure import Spread
from .workloads import BASE_COUNTS, QUESTIONS

#: The JSON's version: a new one when a key changes meaning or goes.
SCHEMA = "symbi-jupyter-bench/1"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One row of the seed's table, as Symbiont's guide gives it."""

    startup: str
    throughput: str
    memory: str
    isolation: str


#: The seed's performance table: Symbiont's claims, which the bench measures.
SEED_CLAIMS = {
    SecurityTier.NONE: Claim("~10 ms", "100 %", "Minimal", "None"),
    SecurityTier.TIER1: Claim("~500 ms", "~95 %", "+128 MB", "Good"),
    SecurityTier.TIER2: Claim("~800 ms", "~70 %", "+256 MB", "Better"),
    SecurityTier.TIER3: Claim("~125 ms", "~90 %", "+64 MB", "Best"),
}

#: How each figure is taken, in words: the output says it, the JSON carries it.
METHODS = {
    "startup": "a trivial cell ('pass') timed by the caller around execute_code: "
    "cold with no pool and no pre-started interpreter (a container created and "
    "started, a VM booted, a fresh Python), warm as configured by default (a "
    "pooled container or VM, a pre-started interpreter), after the previous run's "
    "replacement was ready; median (lowest-highest)",
    "throughput": "five workloads (pure-Python CPU, os.stat/os.getpid, 1 MiB "
    "written, fsynced and read back in the run's directory, processes spawned and "
    "reaped, a 16 MiB buffer copied), each timed inside the sandbox by its own "
    "monotonic clock (no start-up in it); per workload the median time at tier None "
    "over the median time at the tier, in the same run, so tier None is 1.0 by "
    "construction; the summary is their geometric mean",
    "memory": "a cell that sleeps 0.2 s: the sandbox's peak as the host measures it "
    "(the result's memory_method: a native run's cgroup; a container's cgroup, which "
    "under gVisor holds its Sentry and Gofer; the VMM's memory cgroup, QEMU and the "
    "guest's memory), minus the same cell's peak at tier None; the containerd shim "
    "runs outside the container's cgroup and is not counted",
    "isolation": "notebook 01's experiments run inside the sandbox: whether the code "
    "sees this host's name, its processes, a file in /tmp, its kernel, a port it "
    "listens on, its user; 'yes' where the sandbox kept it from the code",
}


@dataclasses.dataclass
class TierFigures:
    """One tier's figures, or why it has none (``reason``)."""

    tier: SecurityTier
    available: bool = True
    reason: str | None = None
    #: what ran it within the tier (the results' sandbox_detail, or the engine)
    detail: str | None = None
    cold: Spread | None = None
    warm: Spread | None = None
    #: warm samples a prepared sandbox took, of those taken
    warm_prepared: tuple[int, int] = (0, 0)
    #: workload -> seconds, one per round
    suite_seconds: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    #: workload -> throughput against tier None (None's own: 1.0)
    throughput: dict[str, float] | None = None
    memory_peak: Spread | None = None
    memory_method: str | None = None
    memory_overhead_bytes: float | None = None
    isolation: dict[str, bool] | None = None
    #: which kernel answered (the host's, gVisor's, its own)
    kernel_words: str | None = None
    #: figures that could not be taken, and why
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def claim(self) -> Claim:
        return SEED_CLAIMS[self.tier]

    @property
    def throughput_summary(self) -> float | None:
        """The geometric mean of the workloads' throughputs (tier None: exactly 1.0)."""
        if not self.throughput:
            return None
        if self.tier is SecurityTier.NONE:
            return 1.0
        return math.exp(sum(math.log(v) for v in self.throughput.values()) / len(self.throughput))

    def unavailable(self, reason: str) -> None:
        self.available, self.reason = False, reason

    def to_json(self) -> dict[str, Any]:
        throughput = None
        if self.throughput is not None:
            throughput = {
                "summary": self.throughput_summary,
                "workloads": dict(self.throughput),
                "seconds": {
                    name: Spread.of(values).median for name, values in self.suite_seconds.items()
                },
            }
        memory = None
        if self.memory_peak is not None:
            overhead = self.memory_overhead_bytes
            memory = {
                "bytes": round(overhead) if overhead is not None else None,
                "peak_bytes": round(self.memory_peak.median),
                "method": self.memory_method,
            }
        return {
            "available": self.available,
            "reason": self.reason,
            "detail": self.detail,
            "startup": None
            if self.cold is None and self.warm is None
            else {
                "cold": self.cold.to_dict() if self.cold else None,
                "warm": self.warm.to_dict() if self.warm else None,
                "warm_prepared": self.warm_prepared[0],
            },
            "throughput": throughput,
            "memory_overhead": memory,
            "isolation": dict(self.isolation) if self.isolation is not None else None,
            "seed": dataclasses.asdict(self.claim),
            "notes": list(self.notes),
        }


@dataclasses.dataclass
class BenchReport:
    """A bench run: each tier's figures, the host, the date and the settings.

    Displayed as the seed's table with the measured figure beside each claim (text, or
    HTML with an inline-SVG chart; the stable rendering leaves the figures out); its
    :meth:`to_json` is what ``--json`` writes.
    """

    tiers: dict[SecurityTier, TierFigures]
    host: dict[str, Any]
    date: str
    quick: bool
    runs: int
    scale: float
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {tier.value: fig.to_json() for tier, fig in self.tiers.items()}
        data["run"] = {
            "schema": SCHEMA,
            "date": self.date,
            "host": dict(self.host),
            "quick": self.quick,
            "runs": self.runs,
            "workload_scale": self.scale,
            "workload_counts": {
                name: max(1, round(count * self.scale)) for name, count in BASE_COUNTS.items()
            },
            "isolation_questions": list(QUESTIONS),
            "seconds": self.seconds,
            "methods": dict(METHODS),
        }
        return data

    # -- display hooks: the renderings live in render/bench.py ---------------------
    def __str__(self) -> str:
        from ..render.bench import render_bench_text

        return render_bench_text(self, display_options(None))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        from ..render.bench import render_bench_html

        return render_bench_html(self, display_options(None))
