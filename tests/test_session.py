"""WorkerSession directly, at tier None: what the kernel builds on."""

from __future__ import annotations

import json

from symbi_jupyter import ResourceLimits, SecurityTier


def test_a_timeout_is_reported_when_other_limits_are_unset(orch) -> None:
    session = orch.open_session(SecurityTier.NONE, ResourceLimits(timeout_seconds=1))
    try:
        # Per-cell limits as a caller may pass them: only a wall clock, no CPU limit.
        outcome = session.execute(
            "while True: pass", lambda message: None, limits=ResourceLimits(timeout_seconds=1)
        )
        assert outcome.result.killed_by == "timeout"
        assert outcome.session_lost.startswith("the cell passed its 1 s wall-clock limit")
        assert not session.alive
    finally:
        session.close()


def test_lines_before_the_workers_first_are_skipped(orch, monkeypatch) -> None:
    """A serial console (Firecracker's) carries boot messages before the agent's first
    line. Here a real worker prints such lines itself before it starts."""
    from symbi_jupyter import orchestrator
    from symbi_jupyter.sandboxes import worker

    noise = b"print('[    0.000000] Linux version 6.1.0 (boot)')\nprint('{\"half\": ')\n"
    source = worker.worker_source()
    monkeypatch.setattr(orchestrator, "worker_source", lambda: noise + source)
    session = orch.open_session(SecurityTier.NONE)
    try:
        messages: list[dict] = []
        outcome = session.execute("print(6 * 7)", messages.append)
        assert outcome.result.success
        assert [m["text"] for m in messages if m.get("type") == "stream"] == ["42\n"]
    finally:
        session.close()


def test_intake_takes_no_boolean_for_a_request_id() -> None:
    """The worker's ``"id": true`` is not request 1 (bool is an int in Python)."""
    from symbi_jupyter.sandboxes.worker.intake import Intake

    intake = Intake()
    intake.ready = True
    intake.expect(1, "execute")
    assert "no open request (id True)" in (intake.feed(b'{"id": true, "type": "reply"}\n') or "")
    assert intake.feed(b'{"id": 1, "type": "reply", "content": {}}\n') is None
    assert "no open request (id 1)" in (intake.feed(b'{"id": 1, "type": "reply"}\n') or "")


def test_a_cell_cannot_say_it_was_interrupted(orch) -> None:
    """``interrupted`` only for an interrupt the host sent: a cell raising
    KeyboardInterrupt itself (or forging ``interrupted`` in a reply) is an error."""
    session = orch.open_session(SecurityTier.NONE)
    try:
        outcome = session.execute("raise KeyboardInterrupt", lambda message: None)
        assert outcome.status == "error" and outcome.reply["interrupted"] is True
        assert outcome.result.killed_by is None and not outcome.session_lost
        assert outcome.result.interrupted is None
    finally:
        session.close()


def test_a_violation_quotes_the_workers_values_short() -> None:
    """A 1 MB message type is named in a line, not copied into the reason."""
    from symbi_jupyter.sandboxes.worker.intake import Intake

    intake = Intake()
    intake.ready = True
    line = json.dumps({"id": "x" * 500_000, "type": "y" * 500_000}).encode() + b"\n"
    reason = intake.feed(line) or ""
    assert reason.startswith("a 'yyyyyy") and "message for no open request" in reason
    assert len(reason) < 200
