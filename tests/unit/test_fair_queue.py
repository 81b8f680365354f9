"""The fair queue's own clock: one recheck timer per process, however often it is woken."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from basic_inference_server.gateway.fair_queue import FairQueue, SharedTags
from basic_inference_server.gateway.loadboard import LoadBoard
from basic_inference_server.tenants.priorities import Priorities


def test_wakes_between_rechecks_add_no_timer():
    # A wake from another process used to start a timer chain of its own beside the
    # pending one: under load, thousands of chains spun the front.
    board = LoadBoard(1)
    fair = FairQueue(board, SharedTags(board))
    standing = Priorities(["standard"], "standard").standing("acme")
    route = SimpleNamespace(name="echo", workers=["w"], slots=1)

    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        fair.start()
        armed = 0
        real = loop.call_later

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += 1
            return real(*args, **kwargs)

        loop.call_later = counted  # type: ignore[method-assign,assignment]
        assert fair.take_now(route, standing)  # type: ignore[arg-type]
        waiting = asyncio.ensure_future(fair.take(route, standing, None))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        for _ in range(20):
            fair.shared.wake(board.row)
            fair._woken()
        before = armed
        fair.give_back("echo")  # the slot passes to the waiting request
        await waiting
        fair.give_back("echo")
        return before, armed

    before, after = asyncio.run(scenario())
    assert (before, after) == (1, 1)
