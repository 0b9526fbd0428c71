"""How much a bench run measures (:class:`Plan`), what each step should cost on a
2-core machine (the estimate said before the run starts), and where a run is
(:class:`Progress`)."""

from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from ..tiers import SecurityTier


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much a run measures: samples of each start-up path and throughput rounds
    (``runs``), idle cells for memory, and the suite's scale."""

    runs: int
    memory_runs: int
    scale: float
    quick: bool

    @classmethod
    def make(cls, quick: bool, runs: int | None = None, scale: float | None = None) -> Plan:
        runs = runs if runs is not None else (3 if quick else 10)
        if runs < 1:
            raise ConfigError(f"--runs must be at least 1, not {runs}")
        scale = scale if scale is not None else (1.0 if quick else 4.0)
        if not scale > 0:
            raise ConfigError(f"--workload-scale must be above 0, not {scale:g}")
        return cls(runs, min(runs, 2 if quick else 3), scale, quick)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a run is: the step, its tier, the estimated share done and time left."""

    step: str
    tier: SecurityTier | None
    done: float
    elapsed_seconds: float
    left_seconds: float

    def __str__(self) -> str:
        where = f"{self.tier.value} · " if self.tier else ""
        return (
            f"[symbi bench] {where}{self.step} · {self.done:.0%} · "
            f"{_clock(self.elapsed_seconds)} elapsed, about {_clock(self.left_seconds)} left"
        )


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(0, round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def say_estimate(seconds: float) -> str:
    """An estimate in words: ``about 40 s``, ``about 3 min``."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    return f"about {round(seconds / 60)} min"


# Rough seconds per step on a 2-core machine (this project's measurements), for the
# estimate and the progress line only: (cold start-up, suite at scale 1, warm cell).
_COSTS = {
    SecurityTier.NONE: (0.03, 0.15, 0.03),
    SecurityTier.TIER1: (0.4, 0.5, 0.1),
    SecurityTier.TIER2: (0.7, 1.5, 0.2),
    SecurityTier.TIER3: (3.5, 2.5, 0.2),
}
_TIER3_KVM_COLD = 0.6


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Estimated seconds of one tier's steps: a cold start-up sample, a warm one with
    the wait before it, a throughput round, an idle or isolation cell; and in all."""

    cold: float
    warm: float
    round: float
    idle: float
    total: float


def step_costs(tier: SecurityTier, plan: Plan, kvm: bool = False) -> StepCosts:
    """What ``tier``'s steps should cost under ``plan`` (Tier3 boots faster under KVM)."""
    cold, suite, warm = _COSTS[tier]
    if tier is SecurityTier.TIER3 and kvm:
        cold = _TIER3_KVM_COLD
    costs = {
        "cold": cold + 0.2,
        # Each warm sample waits for its replacement to be made (about a cold start).
        "warm": warm + cold * 1.5 + 0.1,
        "round": cold + suite * plan.scale + 0.05,
        "idle": cold + 0.3,
    }
    first_warm = warm + cold  # the warm path's first run, which fills its pool
    total = (
        plan.runs * (costs["cold"] + costs["warm"] + costs["round"])
        + (plan.memory_runs + 1) * costs["idle"]
        + first_warm
    )
    return StepCosts(**costs, total=total)
