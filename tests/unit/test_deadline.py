"""A connection's one timer for its successive deadlines (wire/deadline.py)."""

from __future__ import annotations

import asyncio

from basic_inference_server.wire.deadline import Deadline


def run(coro):
    return asyncio.run(coro)


async def expiry(deadline_s: float, moves: list[float] | None = None, clear: bool = False):
    """When (loop time) the deadline fired, after setting it and then each of ``moves``;
    None when it did not fire within twice the last deadline and a margin."""
    loop = asyncio.get_running_loop()
    fired: asyncio.Future[float] = loop.create_future()
    deadline = Deadline(loop, lambda: fired.set_result(loop.time()))
    start = loop.time()
    deadline.set(deadline_s)
    last = start + deadline_s
    for move in moves or []:
        deadline.set(move)
        last = loop.time() + move
    if clear:
        deadline.clear()
    try:
        # Long enough for a loop starved by a busy machine, shorter than any 5 s timer
        # a test tells apart; a cleared deadline is given less, as it never fires.
        at = await asyncio.wait_for(asyncio.shield(fired),
                                    2 * (last - start) + (0.5 if clear else 3.0))
    except TimeoutError:
        deadline.cancel()
        return None, last
    return at, last


def test_it_fires_once_its_deadline_passed():
    at, due = run(expiry(0.05))
    assert at is not None and at >= due - 0.002


def test_a_later_deadline_replaces_an_earlier_one():
    # The timer set for 0.05 s fires early, finds the deadline moved, and waits for it.
    at, due = run(expiry(0.05, [0.2]))
    assert at is not None and at >= due - 0.002


def test_an_earlier_deadline_moves_the_timer():
    at, due = run(expiry(5.0, [0.05]))
    assert at is not None and at >= due - 0.002 and at < due + 2.0


def test_a_cleared_deadline_never_fires():
    at, _due = run(expiry(0.05, clear=True))
    assert at is None


def test_cancel_stops_the_timer():
    async def main():
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop, lambda: None)
        deadline.set(10.0)
        assert deadline.timer is not None
        deadline.cancel()
        assert deadline.timer is None and deadline.due is None
    run(main())
