"""The front's guard around forwarding: breaker admission and outcomes, on a given clock."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from basic_inference_server.errors import CircuitOpen, Overloaded, UpstreamTimeout
from basic_inference_server.gateway.traffic_hooks import TrafficHooks
from basic_inference_server.traffic.stats import Counts

BREAKER = {"CONSECUTIVE_ERRORS": 2, "OPEN_SECONDS": 5, "HALF_OPEN_SUCCESSES": 1}


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def answer(hooks: TrafficHooks, status: int) -> None:
    with hooks.guard("clf@v2", BREAKER) as outcome:
        outcome.status = status


def test_endpoint_failures_open_it_and_it_refuses_without_forwarding() -> None:
    clock = Clock()
    hooks = TrafficHooks("/nonexistent", clock=clock)
    answer(hooks, 500)
    with pytest.raises(UpstreamTimeout), hooks.guard("clf@v2", BREAKER):
        raise UpstreamTimeout("slow")
    assert not hooks.allowed("clf@v2")
    forwarded = []
    with pytest.raises(CircuitOpen) as refused, hooks.guard("clf@v2", BREAKER):
        forwarded.append(1)
    assert not forwarded and refused.value.headers() == [("Retry-After", "5")]
    assert refused.value.to_dict()["ERROR_TYPE"] == "circuit_open"
    counts = hooks.recorder.take()["clf@v2"]
    assert (counts.requests, counts.failures, counts.rejected) == (2, 2, 1)


def test_the_fronts_own_refusal_gives_the_probe_back_and_a_success_closes_it() -> None:
    clock = Clock()
    hooks = TrafficHooks("/nonexistent", clock=clock)
    answer(hooks, 503)
    answer(hooks, 502)
    clock.now += 5
    with pytest.raises(Overloaded), hooks.guard("clf@v2", BREAKER):
        raise Overloaded("bulkhead full")  # the probe never reached the endpoint
    assert hooks.allowed("clf@v2")
    answer(hooks, 404)  # a client error is an answer: the endpoint works
    assert hooks.breakers.describe(clock.now)["clf@v2"]["state"] == "closed"


def test_no_breaker_configured_still_counts() -> None:
    hooks = TrafficHooks("/nonexistent", clock=Clock())
    for _ in range(10):
        with hooks.guard("echo", None) as outcome:
            outcome.status = 500
    assert hooks.allowed("echo") and hooks.recorder.take()["echo"].failures == 10


def test_reports_reach_the_manager_and_undelivered_counts_wait(tmp_path) -> None:
    path = str(tmp_path / "control.sock")
    got: list[dict] = []

    async def manager(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(json.loads(await reader.readline()))
        writer.write(b'{"status": 200, "body": {"RESULT": "report received"}}\n')
        await writer.drain()
        writer.close()

    async def main() -> None:
        hooks = TrafficHooks(path, clock=Clock())
        answer(hooks, 200)
        await hooks.report_once()  # no manager yet: the counts wait for the next report
        server = await asyncio.start_unix_server(manager, path)
        answer(hooks, 500)
        await hooks.report_once()
        await hooks.report_once()  # nothing new: no report
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    [report] = got
    assert report["cmd"] == "traffic_report" and report["args"]["pid"] == os.getpid()
    counts = Counts.from_json(report["args"]["stats"]["clf@v2"])
    assert (counts.requests, counts.failures) == (2, 1)
    assert report["args"]["breakers"]["clf@v2"]["state"] == "closed"
