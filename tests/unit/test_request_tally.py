"""The front's request metrics: counted in memory on the event loop, written once per
loop iteration that counted any; written at once outside a loop."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from basic_inference_server.gateway import metrics


def requests_total(endpoint: str, status: str) -> float:
    return REGISTRY.get_sample_value("bis_requests_total", {
        "endpoint": endpoint, "version": "", "status": status}) or 0.0


def in_flight(endpoint: str) -> float | None:
    return REGISTRY.get_sample_value("bis_in_flight", {"endpoint": endpoint})


def test_counts_on_the_loop_are_written_when_the_iteration_ends():
    async def body() -> list[float]:
        seen = [requests_total("tally-a", "200")]
        for _ in range(3):
            metrics.count_request("tally-a", None, 200)
        metrics.count_request("tally-a", None, 503)
        seen.append(requests_total("tally-a", "200"))  # not yet: same iteration
        await asyncio.sleep(0)  # one loop iteration: the write queued before it has run
        seen.append(requests_total("tally-a", "200"))
        return seen

    before, during, after = asyncio.run(body())
    assert during == before and after == before + 3
    assert requests_total("tally-a", "503") == 1


def test_in_flight_on_the_loop_writes_the_value_it_ends_the_iteration_with():
    async def body() -> list[float | None]:
        metrics.in_flight("tally-b", 1)
        metrics.in_flight("tally-b", 1)
        await asyncio.sleep(0)
        two = in_flight("tally-b")
        metrics.in_flight("tally-b", -1)
        metrics.in_flight("tally-b", -1)
        await asyncio.sleep(0)
        return [two, in_flight("tally-b")]

    assert asyncio.run(body()) == [2.0, 0.0]


def test_off_the_loop_counts_are_written_at_once():
    before = requests_total("tally-c", "202")
    metrics.count_request("tally-c", None, 202)
    assert requests_total("tally-c", "202") == before + 1
    metrics.in_flight("tally-c", 1)
    assert in_flight("tally-c") == 1.0
    metrics.in_flight("tally-c", -1)
    assert in_flight("tally-c") == 0.0
