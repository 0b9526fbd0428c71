"""Measuring the tiers: one way to time a cell (``measure``), which ``benchmarks/``
uses."""

from __future__ import annotations

from .measure import Spread, TimedCell, time_cell, timed

__all__ = ["Spread", "TimedCell", "time_cell", "timed"]
