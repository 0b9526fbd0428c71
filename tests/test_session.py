"""WorkerSession directly, at tier None: what the kernel builds on."""

from __future__ import annotations

from symbi_jupyter import ResourceLimits, SecurityTier


def test_a_timeout_is_reported_when_other_limits_are_unset(orch) -> None:
    session = orch.open_session(SecurityTier.NONE, ResourceLimits(timeout_seconds=1))
    try:
        # Per-cell limits as a caller may pass them: only a wall clock, no CPU limit.
        outcome = session.execute("while True: pass", lambda message: None,
                                  limits=ResourceLimits(timeout_seconds=1))
        assert outcome.result.killed_by == "timeout"
        assert outcome.session_lost.startswith("the cell passed its 1 s wall-clock limit")
        assert not session.alive
    finally:
        session.close()
