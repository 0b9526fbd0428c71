"""The seed's performance table, measured on this host: ``symbi-jupyter bench`` and
``%symbi_bench``.

For each tier: start-up (a trivial cell, cold and warm), throughput against tier None
(five workloads, their geometric mean), memory overhead (an idle cell's peak beyond
tier None's) and isolation (notebook 01's experiments), every figure through the
orchestrator's public ``execute_code``. Split by what each module holds: ``measure``
(one way to time a cell, which ``benchmarks/`` uses too), ``workloads`` with ``suite``
and ``probe`` (the cells, shipped as source), ``plan`` (what a run measures, its
estimate and progress), ``runner`` (a run), ``host`` (the host's facts), ``report``
(the figures and their JSON) and ``cli`` (the flags, shared by the command and the
magics). The renderings are in ``render/bench.py`` and ``render/bench_chart.py``.
"""

from __future__ import annotations

from .measure import Spread, TimedCell, time_cell, timed
from .plan import Progress
from .report import SEED_CLAIMS, BenchReport, TierFigures
from .runner import run_bench

__all__ = [
    "SEED_CLAIMS",
    "BenchReport",
    "Progress",
    "Spread",
    "TierFigures",
    "TimedCell",
    "run_bench",
    "time_cell",
    "timed",
]
