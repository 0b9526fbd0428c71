"""ReadyPool: sandboxes made in advance, each handed out at most once."""

from __future__ import annotations

import threading

from symbi_jupyter.sandboxes._pool import ReadyPool

from .helpers import wait_until


class Box:
    """A stand-in sandbox: whether it still works, and whether it was destroyed."""

    def __init__(self, n: int, alive: bool = True) -> None:
        self.n, self.alive, self.discarded = n, alive, False


def pool() -> ReadyPool[Box]:
    return ReadyPool(
        "test", discard=lambda b: setattr(b, "discarded", True), usable=lambda b: b.alive
    )


def test_refill_makes_up_to_size_and_take_hands_out_the_oldest_once() -> None:
    p, made = pool(), []

    def make() -> Box:
        made.append(Box(len(made)))
        return made[-1]

    p.refill("k", 2, make)
    assert wait_until(lambda: len(p._ready.get("k", [])) == 2)
    assert [p.take("k").n, p.take("k").n, p.take("k")] == [0, 1, None]
    assert p.take("other") is None
    p.close()
    assert len(made) == 2


def test_an_unusable_sandbox_is_destroyed_not_handed_out() -> None:
    p, boxes = pool(), [Box(0, alive=False), Box(1)]
    it = iter(boxes)
    p.refill("k", 2, lambda: next(it))
    assert wait_until(lambda: len(p._ready.get("k", [])) == 2)
    assert p.take("k") is boxes[1]
    assert boxes[0].discarded and not boxes[1].discarded


def test_close_destroys_waiting_and_late_sandboxes() -> None:
    p, gate, making, late = pool(), threading.Event(), threading.Event(), Box(9)
    p.refill("k", 1, lambda: (making.set(), gate.wait(5), late)[2])
    assert making.wait(5)
    closer = threading.Thread(target=p.close)
    closer.start()
    gate.set()  # the one being made right now finishes after close() began
    closer.join(10)
    assert late.discarded
    p.refill("k", 1, lambda: Box(10))  # a closed pool makes nothing more
    assert p.take("k") is None


def hand_over_together(p: ReadyPool[Box], callers: int) -> list[int]:
    """``callers`` threads hand a removal each to ``p`` at the same moment; the list
    the removals append their numbers to once done."""
    done: list[int] = []
    barrier = threading.Barrier(callers)

    def removal(n: int) -> None:
        threading.Event().wait(0.05)
        done.append(n)

    def hand_over(n: int) -> None:
        barrier.wait()
        p.later(lambda: removal(n))

    threads = [threading.Thread(target=hand_over, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def test_close_waits_for_every_removal_handed_over_at_once() -> None:
    """Runs that end together hand their removals over together (a map's stopped
    items): close() returns only once every one of them is done."""
    for _ in range(20):
        p = pool()
        done = hand_over_together(p, 8)
        p.close()
        assert sorted(done) == list(range(8))


def test_a_removal_handed_over_after_close_is_done_before_later_returns() -> None:
    p, done = pool(), []
    p.close()
    p.later(lambda: (threading.Event().wait(0.2), done.append(1)))
    assert done == [1]
