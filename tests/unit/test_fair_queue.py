"""The fair queue's own clock: one recheck timer per process, however often it is woken;
and the slots per worker it adapts to the endpoint's speed (FAIR_BACKLOG_MS)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from unittest import mock

import pytest

from basic_inference_server.gateway.fair_queue import (
    MAX_SLOTS,
    SERVICE_ALPHA,
    TIME_EVERY,
    FairQueue,
    ended,
)
from basic_inference_server.gateway.fair_shared import SharedTags
from basic_inference_server.gateway.loadboard import LoadBoard
from basic_inference_server.gateway.upstream_conn import UpstreamResponse
from basic_inference_server.tenants.priorities import Priorities


def test_wakes_between_rechecks_add_no_timer():
    # A wake from another process used to start a timer chain of its own beside the
    # pending one: under load, thousands of chains spun the front.
    board = LoadBoard(1)
    fair = FairQueue(board, SharedTags(board))
    standing = Priorities(["standard"], "standard").standing("acme")
    route = SimpleNamespace(name="echo", workers=["w"], slots=1, backlog_ms=0.0)

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


# FAIR_BACKLOG_MS: each worker's slots follow the endpoint's measured service time.

STANDING = Priorities(["standard"], "standard").standing("acme")


def endpoint(backlog_ms: float = 2.0, slots: int = 1, workers: int = 2) -> SimpleNamespace:
    """A stand-in for a contracts.Route: what the fair queue reads of one."""
    return SimpleNamespace(name="echo", workers=[f"w{i}" for i in range(workers)],
                           slots=slots, backlog_ms=backlog_ms)


def granted(fair: FairQueue, route: SimpleNamespace, tries: int = 500) -> int:
    """Slots taken at once, without waiting, until none is left."""
    return sum(fair.take_now(route, STANDING) for _ in range(tries))  # type: ignore[arg-type]


def measured(route: SimpleNamespace, service_s: float) -> FairQueue:
    """A queue whose endpoint answered once, its workers each running one request:
    a service time of ``service_s``."""
    board = LoadBoard(1)
    fair = FairQueue(board, SharedTags(board))
    assert granted(fair, route, len(route.workers)) == len(route.workers)
    fair.answered(route, service_s)  # type: ignore[arg-type]  # one running on each worker
    for _ in route.workers:
        fair.give_back(route.name)
    return fair


def test_no_estimate_yet_is_the_fixed_cap():
    board = LoadBoard(1)
    assert granted(FairQueue(board, SharedTags(board)), endpoint()) == 2


def test_a_fast_endpoint_gets_slots_at_once_for_its_backlog():
    # 0.3 ms a request, 2 ms of backlog: 1 + floor(2 / 0.3) = 7 a worker, 14 in all.
    assert granted(measured(endpoint(), 0.0003), endpoint()) == 14


def test_a_20ms_endpoint_keeps_its_slots_per_worker():
    assert granted(measured(endpoint(), 0.020), endpoint()) == 2
    assert granted(measured(endpoint(slots=4, workers=3), 0.020), endpoint(slots=4, workers=3)) == 12


def test_fair_backlog_ms_0_never_adapts():
    route = endpoint(backlog_ms=0)
    assert granted(measured(route, 0.00001), route) == 2


def test_the_slots_a_worker_gets_are_bounded():
    # 1 us a request would ask for 2001 a worker.
    assert granted(measured(endpoint(), 0.000001), endpoint()) == 2 * MAX_SLOTS
    # FAIR_SLOTS past the bound is kept.
    big = endpoint(slots=MAX_SLOTS + 8)
    assert granted(measured(big, 0.000001), big) == 2 * (MAX_SLOTS + 8)


def test_the_estimate_is_per_request_and_moves_by_its_average():
    route = endpoint(workers=4)
    fair = measured(route, 0.010)  # 4 running on 4 workers: 10 ms each
    # 40 ms with 16 running (4 a worker): 10 ms each; 1 running, 5 ms: a worker of its own.
    lane = fair._lanes["echo"]
    lane.timed(route, 0.040, 16)  # type: ignore[arg-type]
    lane.timed(route, 0.005, 1)  # type: ignore[arg-type]
    assert lane.service == pytest.approx(0.010 + SERVICE_ALPHA * (0.005 - 0.010))
    # Faster answers pull it down to 1.5 ms: each worker gets 1 + floor(2 / 1.5).
    for _ in range(100):
        lane.timed(route, 0.0015, 4)  # type: ignore[arg-type]
    assert lane.cap == 4 * 2


def test_a_new_route_sizes_the_cap_again():
    fair = measured(endpoint(), 0.0003)
    assert granted(fair, endpoint(workers=3)) == 3 * 7  # a third worker came


def test_a_grown_cap_starts_the_waiting_requests_at_once():
    route = endpoint()
    board = LoadBoard(1)
    fair = FairQueue(board, SharedTags(board))

    async def scenario() -> int:
        fair.start()
        assert granted(fair, route) == 2
        waiting = [asyncio.ensure_future(fair.take(route, STANDING, None))  # type: ignore[arg-type]
                   for _ in range(5)]
        await asyncio.sleep(0)
        fair.answered(route, 0.0003)  # type: ignore[arg-type]  # 2 running: one a worker
        fair.give_back("echo")  # one slot freed, 13 of 14 now free: all five start
        await asyncio.sleep(0)
        started = sum(w.done() for w in waiting)
        for w in waiting:
            w.cancel()
        return started

    assert asyncio.run(scenario()) == 5


def answer(status: int = 200, streamed: bool = False) -> UpstreamResponse:
    return UpstreamResponse(status=status, stream=mock.Mock() if streamed else None)


@pytest.mark.parametrize(("backlog_ms", "resp", "timed"), [
    (2.0, answer(), True),
    (2.0, answer(502), False),  # a failure says nothing of the endpoint's speed
    (2.0, answer(streamed=True), False),  # a stream's time is its length
    (0.0, answer(), False),  # adaptation off: nothing timed
])
def test_plain_answers_are_timed(backlog_ms, resp, timed):
    route = endpoint(backlog_ms, workers=TIME_EVERY)  # (a held stream keeps its slot)
    board = LoadBoard(1)
    fair = FairQueue(board, SharedTags(board))

    async def call() -> None:
        assert fair.take_now(route, STANDING)  # type: ignore[arg-type]
        sent = fair.clock(route)  # type: ignore[arg-type]
        await asyncio.sleep(0.001)
        ended(fair, route, resp, sent)  # type: ignore[arg-type]

    async def calls(n: int) -> None:
        for _ in range(n):
            await call()

    asyncio.run(calls(TIME_EVERY - 1))
    assert fair._lanes["echo"].service == 0.0  # one in TIME_EVERY is timed
    asyncio.run(calls(1))
    service = fair._lanes["echo"].service
    # One request running on TIME_EVERY workers: a worker of its own, its whole latency.
    assert (service >= 0.001) if timed else service == 0.0
    # Its slot was given back, or is held by its stream until the stream ends.
    assert board.load_at(fair._lanes["echo"].running) == (TIME_EVERY if resp.stream else 0)
