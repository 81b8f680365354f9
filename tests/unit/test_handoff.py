"""The request threads' hand-off: results and errors reach the loop, a call cancelled
before it started never runs, one cancelled while it runs hands its result over."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from basic_inference_server.wire.handoff import Handoff

WAIT_S = 10.0


def run(body: Callable[[asyncio.AbstractEventLoop], object]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(body(loop))  # type: ignore[arg-type]
    finally:
        loop.close()


def test_results_and_errors_reach_the_loop_in_order_on_one_thread():
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        handoff = Handoff(loop, 1, "t")
        threads = set()

        def work(i: int) -> int:
            threads.add(threading.current_thread().name)
            if i == 3:
                raise ValueError("three")
            return i * 2

        calls = [handoff.call(work, i) for i in range(6)]
        done = await asyncio.wait_for(asyncio.gather(*(c.future for c in calls),
                                                     return_exceptions=True), WAIT_S)
        assert done[:3] == [0, 2, 4] and done[4:] == [8, 10]
        assert isinstance(done[3], ValueError)
        assert threads == {"t_0"}
        handoff.shutdown()

    run(body)


def test_a_call_cancelled_before_it_started_never_runs():
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        handoff = Handoff(loop, 1, "t")
        gate, ran = threading.Event(), []
        first = handoff.call(gate.wait, WAIT_S)
        second = handoff.call(ran.append, "second")
        second.future.cancel()
        assert second.cancel(lambda _result: ran.append("leftover")) is True
        gate.set()
        assert await asyncio.wait_for(first.future, WAIT_S) is True
        # Anything after it on the same thread runs after the dropped call would have.
        assert await asyncio.wait_for(handoff.call(ran.append, "third").future, WAIT_S) is None
        assert ran == ["third"]
        handoff.shutdown()

    run(body)


@pytest.mark.parametrize("settled_first", [False, True])
def test_a_call_cancelled_while_it_runs_hands_its_result_over(settled_first: bool):
    """Either order of the loop's cancel and the thread's answer gives it over once."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        handoff = Handoff(loop, 1, "t")
        started, gate = threading.Event(), threading.Event()

        def work() -> str:
            started.set()
            gate.wait(WAIT_S)
            return "answer"

        call = handoff.call(work)
        assert await loop.run_in_executor(None, started.wait, WAIT_S)
        call.future.cancel()
        leftovers: list[str] = []
        if settled_first:
            gate.set()
            marker = handoff.call(str, "after")
            # The answer's settle was queued on the loop before the marker's.
            await asyncio.wait_for(marker.future, WAIT_S)
            assert call.cancel(leftovers.append) is False
        else:
            assert call.cancel(leftovers.append) is False
            gate.set()
            await asyncio.wait_for(handoff.call(str, "after").future, WAIT_S)
        assert leftovers == ["answer"]
        handoff.shutdown()

    run(body)


def test_submit_runs_on_the_same_threads_and_shutdown_cancels_what_waits():
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        handoff = Handoff(loop, 1, "t")
        gate = threading.Event()
        blocker = handoff.submit(gate.wait, WAIT_S)
        names = handoff.submit(lambda: threading.current_thread().name)
        gate.set()
        assert blocker.result(WAIT_S) is True and names.result(WAIT_S) == "t_0"
        gate.clear()
        running = threading.Event()
        held = handoff.submit(lambda: running.set() or gate.wait(WAIT_S))
        waiting = handoff.submit(str, "never")
        assert running.wait(WAIT_S)
        handoff.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert held.result(WAIT_S) is True and waiting.cancelled()
        with pytest.raises(RuntimeError):
            handoff.call(str, "late")

    run(body)
