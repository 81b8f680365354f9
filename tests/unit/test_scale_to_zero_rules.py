"""Scale to zero: its settings' checks, readiness, and the idle watch's decisions."""

from __future__ import annotations

import asyncio
import re

import pytest

from basic_inference_server.contracts import EndpointState, Route, RouteSnapshot
from basic_inference_server.gateway.idle_watch import STARTED, IdleWatch
from basic_inference_server.gateway.loadboard import LoadBoard
from basic_inference_server.gateway.readiness import waiting_for


@pytest.mark.parametrize(("section", "problem"), [
    ({"MIN_WORKERS": 1}, "must be 0 (scale to zero when idle) or null"),
    ({"MIN_WORKERS": 0, "URLS": ["http://127.0.0.1:1"]}, "remote endpoints, pipelines"),
    ({"IDLE_TIMEOUT": 0.1}, "IDLE_TIMEOUT must be >= 0.5"),
    ({"COLD_START_TIMEOUT": 0}, "COLD_START_TIMEOUT must be >= 1"),
])
def test_scale_to_zero_settings_are_checked(section, problem):
    from basic_inference_server.config import parse_config
    from basic_inference_server.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config({"CONFIG_ENDPOINTS": {"a": section}})


def test_an_endpoint_at_zero_keeps_the_gateway_ready():
    assert waiting_for({"a": "IDLE", "b": "READY"}, "all") == {}
    assert waiting_for({"a": "IDLE"}, "any") == {}
    assert waiting_for({"a": "IDLE"}, ["a"]) == {}
    assert waiting_for({"a": "IDLE", "b": "STARTING"}, "all") == {"b": "STARTING"}


class FakeRoutes:
    def __init__(self, route: Route) -> None:
        self.snapshot = RouteSnapshot(endpoints={route.name: route})

    def table(self, fresh: bool = False) -> RouteSnapshot:
        return self.snapshot

    def get(self, name: str, fresh: bool = False) -> Route | None:
        return self.snapshot.endpoints.get(name)


class NoJobs:
    spec = None


def test_the_watch_reports_only_after_idle_timeout_without_any_request():
    route = Route(name="lazy", state=EndpointState.READY, timeout=10, idle_timeout=2.0)
    board, now, reports = LoadBoard(rows=2, columns=64), [0.0], []

    async def off_loop(func, *args):
        return func(*args)

    woken: list[str] = []
    watch = IdleWatch(FakeRoutes(route), board, NoJobs(), "-", off_loop, woken.append,
                      clock=lambda: now[0])

    async def report(name, idle_s):
        reports.append((name, idle_s))

    watch._report = report

    def look(at: float) -> None:
        now[0] = at
        asyncio.run(watch.check_once())

    look(0.0)
    look(1.9)
    assert reports == []
    board.add(STARTED + "lazy", 1)  # a request, shorter than a look, moved the count
    look(2.5)
    look(4.4)
    assert reports == []
    board.add("@lazy", 1)  # one in flight for long: never idle meanwhile
    look(9.0)
    assert reports == []
    board.add("@lazy", -1)
    look(9.1)
    look(11.1)
    assert reports == [("lazy", pytest.approx(2.1))]  # idle since the last look it was busy
    look(11.5)  # reported again only after REPORT_AGAIN
    assert len(reports) == 1 and woken == []


def test_a_request_caught_in_a_scale_down_wakes_the_endpoint():
    route = Route(name="lazy", state=EndpointState.IDLE, timeout=10, idle_timeout=2.0)
    board, woken = LoadBoard(rows=1, columns=64), []

    async def off_loop(func, *args):
        return func(*args)

    watch = IdleWatch(FakeRoutes(route), board, NoJobs(), "-", off_loop, woken.append)
    asyncio.run(watch.check_once())
    assert woken == []
    board.add("@lazy", 1)  # routed while READY, waiting on the shared socket
    asyncio.run(watch.check_once())
    assert woken == ["lazy"]


class AllowAll:
    def allowed(self, _target: str) -> bool:
        return True


def test_a_version_scaled_to_zero_still_gets_its_share_of_the_traffic():
    from basic_inference_server.gateway.dispatch import Dispatcher

    board = LoadBoard(rows=1, columns=64)
    for state, idle_timeout, takes in ((EndpointState.IDLE, 2.0, True),
                                       (EndpointState.IDLE, None, False),
                                       (EndpointState.FAILED, 2.0, False),
                                       (EndpointState.READY, None, True)):
        route = Route(name="clf@v2", state=state, timeout=10, idle_timeout=idle_timeout)
        dispatcher = Dispatcher(FakeRoutes(route), board, None, AllowAll(), None)
        assert dispatcher.may_take("clf@v2") is takes, (state, idle_timeout)


class QueuedJobs:
    spec = object()

    def __init__(self) -> None:
        self.depth, self.asked = 0, 0

    def status(self, names):
        self.asked += 1
        return {names[0]: {"depth": self.depth}}


def test_an_idle_endpoint_with_jobs_waiting_is_woken():
    route = Route(name="lazy", state=EndpointState.IDLE, timeout=10, idle_timeout=2.0)
    jobs, woken, now = QueuedJobs(), [], [0.0]

    async def off_loop(func, *args):
        return func(*args)

    watch = IdleWatch(FakeRoutes(route), LoadBoard(rows=1, columns=64), jobs, "-", off_loop,
                      woken.append, clock=lambda: now[0])
    asyncio.run(watch.check_once())
    assert (woken, jobs.asked) == ([], 1)
    jobs.depth = 1  # queued as it stopped: its submit saw it READY
    now[0] = 0.5
    asyncio.run(watch.check_once())
    assert (woken, jobs.asked) == ([], 1)  # the queue is looked at once a second
    now[0] = 1.0
    asyncio.run(watch.check_once())
    assert (woken, jobs.asked) == (["lazy"], 2)
