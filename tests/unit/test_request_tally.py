"""The front's request metrics: counted in memory on the event loop, written once per
loop iteration that counted any; written at once outside a loop. ``bis_in_flight``:
read from the load board at scrape time."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from basic_inference_server.gateway import metrics
from basic_inference_server.gateway.loadboard import LoadBoard


def requests_total(endpoint: str, status: str) -> float:
    return REGISTRY.get_sample_value("bis_requests_total", {
        "endpoint": endpoint, "version": "", "status": status}) or 0.0


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


def test_off_the_loop_counts_are_written_at_once():
    before = requests_total("tally-c", "202")
    metrics.count_request("tally-c", None, 202)
    assert requests_total("tally-c", "202") == before + 1


def test_a_batch_of_latencies_lands_where_observe_puts_each():
    registry = CollectorRegistry()
    bounds = (0.001, 0.01, 0.1, 1)
    one_by_one = Histogram("h_each", "h", registry=registry, buckets=bounds)
    batched = Histogram("h_batch", "h", registry=registry, buckets=bounds)
    amounts = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1, 3, 120]
    for amount in amounts:
        one_by_one.observe(amount)
    metrics._observe_all(batched, amounts)

    def samples(name: str) -> dict[tuple[str, str], float]:
        return {(s.name.removeprefix(name), s.labels.get("le", "")): s.value
                for family in registry.collect() if family.name == name
                for s in family.samples if not s.name.endswith("_created")}

    assert samples("h_batch") == samples("h_each")
    assert samples("h_batch")[("_count", "")] == len(amounts)


def test_latencies_on_the_loop_are_written_when_the_iteration_ends():
    def count() -> float:
        return REGISTRY.get_sample_value("bis_request_seconds_count",
                                         {"endpoint": "tally-d", "version": ""}) or 0.0

    async def body() -> list[float]:
        seen = [count()]
        metrics.time_request("tally-d", None, 0.002)
        metrics.time_request("tally-d", None, 0.2)
        seen.append(count())
        await asyncio.sleep(0)
        return [*seen, count()]

    before, during, after = asyncio.run(body())
    assert during == before and after == before + 2


def test_in_flight_is_read_from_the_load_board_over_every_process_row():
    board = LoadBoard(rows=2, columns=64)
    board.add("@echo", 2)  # row 0
    board.claim_row(1)
    board.add("@echo", 1)
    board.add("@echo@v1", 1)
    board.add("/tmp/bis/echo.g1w0", 5)  # a worker socket: not a route
    registry = CollectorRegistry()
    registry.register(metrics.InFlight(board, ["echo", "echo@v1", "idle"]))
    got = {s.labels["endpoint"]: s.value for family in registry.collect()
           for s in family.samples if s.name == "bis_in_flight"}
    assert got == {"echo": 3.0, "echo@v1": 1.0, "idle": 0.0}
