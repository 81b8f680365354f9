"""The ``/run`` flow built in-process on a fake upstream: no gateway, no sockets.

The route table is a file the test writes (the front reads the manager's the same way);
what the flow sends is recorded by :class:`FakeUpstream`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from basic_inference_server import streams
from basic_inference_server.contracts import EndpointState, Route, RouteSnapshot, TrafficPolicy
from basic_inference_server.errors import Forbidden
from basic_inference_server.gateway.dispatch import Dispatcher
from basic_inference_server.gateway.loadboard import LoadBoard
from basic_inference_server.gateway.pipelines import Pipelines
from basic_inference_server.gateway.routes import RouteTable
from basic_inference_server.gateway.run_flow import RunFlow
from basic_inference_server.gateway.run_plan import Planner, plan_run
from basic_inference_server.gateway.tenancy import NO_HOLD, KeyTenancy, NoTenancy, TenantHold
from basic_inference_server.gateway.traffic_hooks import TrafficHooks
from basic_inference_server.gateway.upstream_conn import StreamEnd, UpstreamResponse
from basic_inference_server.tenants.keys import ApiKey
from basic_inference_server.traffic.shadow import Shadow
from basic_inference_server.wire.message import Answer, Request

BREAKER = {"CONSECUTIVE_ERRORS": 1, "OPEN_SECONDS": 30, "HALF_OPEN_SUCCESSES": 1}
SSE = [(b"content-type", streams.SSE_TYPE.encode())]


def route(name: str, **fields: Any) -> Route:
    return Route(name=name, state=EndpointState.READY, timeout=5.0, socket="/none/" + name,
                 max_in_flight=10, **fields)


def table(tmp_path: Path, routes: list[Route], traffic: dict[str, TrafficPolicy] | None = None
          ) -> RouteTable:
    path = tmp_path / "routes.json"
    snapshot = RouteSnapshot({r.name: r for r in routes}, traffic or {})
    path.write_text(json.dumps(snapshot.to_json()))
    return RouteTable(str(path))


def versions(name: str, weights: dict[str, float], **fields: Any) -> TrafficPolicy:
    return TrafficPolicy(versions={v: f"{name}@{v}" for v in weights}, weights=weights,
                         **fields)


class FakeStream:
    """An endpoint's stream: the pieces given, then its end."""

    def __init__(self, name: str, pieces: list[bytes]) -> None:
        self.name = name
        self.pieces = list(pieces)
        self.route = {"timeout": 5}
        self.end = StreamEnd()
        self.closed = False
        self.holds: list[Callable[[StreamEnd], Any]] = []

    def hold(self, release: Callable[[StreamEnd], Any]) -> None:
        self.holds.append(release)

    async def read(self, timeout: float | None = None) -> bytes | None:
        return self.pieces.pop(0) if self.pieces else None

    async def aclose(self) -> None:
        self.closed = True
        for release in reversed(self.holds):
            done = release(self.end)
            if isinstance(done, Awaitable):
                await done


class FakeUpstream:
    """Answers every request with ``answer(name, body)``; records what it was sent."""

    def __init__(self, answer: Callable[[str, dict[str, Any]], UpstreamResponse]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, dict[str, Any], bytes]] = []

    async def forward(self, route: dict[str, Any], name: str, head: bytes,
                      body: bytes, timeout: float | None = None) -> UpstreamResponse:
        self.sent.append((name, orjson.loads(body), head))
        return self.answer(name, orjson.loads(body))

    forward_remote = forward


def echo(name: str, body: dict[str, Any]) -> UpstreamResponse:
    if body.get("FAIL"):
        return UpstreamResponse(500, [(b"content-type", b"application/json")],
                                b'{"ERROR": "boom", "ERROR_TYPE": "internal_error"}')
    if body.get("STREAM"):
        events = streams.event(streams.Format.SSE, "chunk", 1, {"FROM": name}) + \
            streams.event(streams.Format.SSE, "done", 2, {"USAGE": 3})
        return UpstreamResponse(200, list(SSE), stream=FakeStream(name, [events]))  # type: ignore[arg-type]
    return UpstreamResponse(200, [(b"content-type", b"application/json")],
                            orjson.dumps({**body, "SERVED_BY": name}))


class Flow:
    """A run flow on ``routes``, its upstream and its breakers."""

    def __init__(self, routes: RouteTable, tenancy: Any = None,
                 answer: Callable[[str, dict[str, Any]], UpstreamResponse] = echo) -> None:
        self.upstream = FakeUpstream(answer)
        self.traffic = TrafficHooks("/nonexistent")
        self.submitted: list[Request] = []

        async def off_loop(func: Any, *args: Any) -> Any:
            return func(*args)

        async def submit(req: Request) -> Answer:
            self.submitted.append(req)
            return Answer(202)

        self.dispatcher = Dispatcher(routes, LoadBoard(rows=1, columns=64), self.upstream,
                                     self.traffic, off_loop)
        self.shadowed: list[tuple[str, Any]] = []
        self.shadow = Shadow(self.dispatcher.dispatch,
                             lambda *args: self.shadowed.append(args), off_loop=off_loop)
        self.flow = RunFlow(self.dispatcher, tenancy or NoTenancy(), self.shadow,
                            lambda: {"SERVER": "test"}, off_loop, submit)
        self.dispatcher.pipelines = Pipelines(self.flow)

    def run(self, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None,
            key: ApiKey | None = None) -> tuple[Answer, dict[str, Any]]:
        req = Request("POST", "/run", "", headers or [], orjson.dumps(body), "rid-1", True,
                      ("127.0.0.1", 1), key=key)

        async def go() -> tuple[Answer, dict[str, Any]]:
            answer = await self.flow.run(req)
            if answer.stream is not None:
                chunks = [c async for c in answer.stream]
                return answer, {"STREAMED": b"".join(chunks).decode()}
            await self.shadow.drain()
            return answer, orjson.loads(answer.body) if answer.body else {}

        return asyncio.run(go())


def test_a_request_goes_to_its_endpoint_and_the_answer_passes_through(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("echo")]))
    answer, body = flow.run({"SIGNATURE": "echo", "X": 1})
    assert answer.status == 200 and body == {"SIGNATURE": "echo", "X": 1, "SERVED_BY": "echo"}
    assert [name for name, _, _ in flow.upstream.sent] == ["echo"]
    assert b"X-Request-ID: rid-1" in flow.upstream.sent[0][2]


def test_a_pinned_version_is_routed_as_named_and_says_which(tmp_path: Path) -> None:
    routes = table(tmp_path, [route("clf@v1", version="v1"), route("clf@v2", version="v2")],
                   {"clf": versions("clf", {"v1": 100, "v2": 0})})
    answer, body = Flow(routes).run({"SIGNATURE": "clf@v2"})
    assert body["SERVED_BY"] == "clf@v2" and ("X-Endpoint-Version", "v2") in answer.headers


def test_the_canary_pick_is_sticky_by_tenant_and_follows_the_weights(tmp_path: Path) -> None:
    policy = versions("clf", {"stable": 80, "canary": 20})
    routes = table(tmp_path, [route("clf@stable", version="stable"),
                              route("clf@canary", version="canary")], {"clf": policy})
    snapshot = routes.table()
    picks = {}
    for n in range(400):
        req = Request("POST", "/run", "", [(b"x-customer-id", b"t%d" % n)], b"{}", "r", True,
                      ("127.0.0.1", 1))
        first = plan_run("clf", b"{}", req, snapshot, lambda _t: True)
        again = plan_run("clf", b"{}", req, snapshot, lambda _t: True)
        assert first == again, "one tenant, one version"
        picks[n] = first.version
    canary = sum(v == "canary" for v in picks.values())
    assert 40 <= canary <= 120, canary  # about 20% of 400
    # A version that may not take requests (its breaker open) gives its share away.
    req = Request("POST", "/run", "", [], b"{}", "r", True, ("127.0.0.1", 1))
    assert all(plan_run("clf", b"{}", req, snapshot, lambda t: t != "clf@canary").version
               == "stable" for _ in range(50))


def test_an_open_breaker_refuses_without_forwarding(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("flaky", breaker=BREAKER)]))
    failed, _ = flow.run({"SIGNATURE": "flaky", "FAIL": True})
    assert failed.status == 500
    refused, body = flow.run({"SIGNATURE": "flaky"})
    assert refused.status == 503 and body["ERROR_TYPE"] == "circuit_open"
    assert ("Retry-After", "30") in refused.headers
    assert len(flow.upstream.sent) == 1, "the refused request was not forwarded"


class RefusingTenancy(NoTenancy):
    """Keys on, and this key may call nothing."""

    released: list[TenantHold] = []

    def admit_now(self, req: Request, label: str) -> TenantHold | None:
        return None

    async def admit(self, req: Request, label: str) -> TenantHold:
        raise Forbidden(f"this API key may not call {label!r}", SIGNATURE=label)


def test_a_tenant_refusal_is_answered_and_nothing_is_sent(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("echo")]), tenancy=RefusingTenancy())
    answer, body = flow.run({"SIGNATURE": "echo"})
    assert answer.status == 403 and body["ERROR_TYPE"] == "forbidden"
    assert body["SERVER"] == "test" and not flow.upstream.sent


def test_without_keys_the_flow_holds_nothing() -> None:
    tenancy = NoTenancy()
    req = Request("POST", "/run", "", [], b"{}", "r", True, ("127.0.0.1", 1))
    assert tenancy.identify_now(req) and req.key is None
    assert tenancy.admit_now(req, "echo") is NO_HOLD and tenancy.release_now(NO_HOLD)
    assert tenancy.charge_now(NO_HOLD, UpstreamResponse(200)) == 0.0


def test_a_stream_is_relayed_and_a_whole_answer_is_not(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("words")]))
    answer, body = flow.run({"SIGNATURE": "words", "STREAM": True})
    assert answer.status == 200 and answer.body == b""
    assert ("Cache-Control", "no-cache") in answer.headers
    text = body["STREAMED"]
    assert text.index("event: chunk") < text.index("event: done")
    whole, body = flow.run({"SIGNATURE": "words"})
    assert whole.stream is None and body["SERVED_BY"] == "words"


PIPE = {"STEPS": [{"ID": "a", "SIGNATURE": "echo", "INPUT": {"N": "$input.N"}},
                  {"ID": "b", "SIGNATURE": "words", "INPUT": {"M": "$steps.a.N"}}]}


def test_a_pipeline_runs_its_steps_through_the_flow(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("echo"), route("words"), route("pipe", pipeline=PIPE)]))
    answer, body = flow.run({"SIGNATURE": "pipe", "N": 3})
    assert answer.status == 200 and body["M"] == 3 and body["SERVED_BY"] == "words"
    assert [s["ID"] for s in body["PIPELINE"]["STEPS"]] == ["a", "b"]
    assert [name for name, _, _ in flow.upstream.sent] == ["echo", "words"]


def test_a_pipeline_asked_for_a_stream_relays_its_final_steps(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("echo"), route("words"), route("pipe", pipeline=PIPE)]))
    answer, body = flow.run({"SIGNATURE": "pipe", "N": 3},
                            headers=[(b"accept", streams.SSE_TYPE.encode())])
    assert answer.status == 200 and '"FROM":"words"' in body["STREAMED"]
    (first, first_body, first_head), (last, last_body, last_head) = flow.upstream.sent
    assert (first, last) == ("echo", "words")
    assert b"Accept" not in first_head and "STREAM" not in first_body, "earlier steps: whole"
    assert last_body["STREAM"] is True and b"Accept: text/event-stream" in last_head


class MeteringGate:
    """A key store's gate that admits every key and notes what each request is metered."""

    def __init__(self) -> None:
        self.metered: list[tuple[str, int, float]] = []

    def admit_held(self, key: ApiKey, endpoint: str) -> tuple[None, None]:
        return None, None

    def record(self, key: ApiKey, endpoint: str, status: int, units: float,
               latency: float) -> None:
        self.metered.append((endpoint, status, units))


def test_a_streamed_pipeline_is_charged_every_steps_units(tmp_path: Path) -> None:
    async def off_loop(func: Any, *args: Any) -> Any:
        return func(*args)

    gate = MeteringGate()
    keys = KeyTenancy(gate, off_loop, None)  # type: ignore[arg-type]
    pipe = {"STEPS": [{"ID": "a", "SIGNATURE": "echo", "INPUT": {"USAGE": 2}},
                      {"ID": "b", "SIGNATURE": "words", "INPUT": {}}]}
    flow = Flow(table(tmp_path, [route("echo"), route("words"), route("pipe", pipeline=pipe)]),
                tenancy=keys)
    answer, body = flow.run({"SIGNATURE": "pipe", "STREAM": True},
                            key=ApiKey(id="k", tenant="t", hash="h"))
    assert answer.status == 200 and "USAGE" not in body["STREAMED"], "taken out with keys"
    assert gate.metered == [("pipe", 200, 5.0)], "2 from the first step, 3 from the stream"


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"SIGNATURE": "nowhere"}, 404, "not_found"),
    ({"SIGNATURE": "echo", "FAIL": True}, 500, "internal_error"),
    ({"NO": "SIGNATURE"}, 400, "bad_request"),
    ({"SIGNATURE": "pipe", "FAIL": True}, 502, "step_failed"),
])
def test_errors_map_to_their_status(tmp_path: Path, body: dict[str, Any], status: int,
                                    kind: str) -> None:
    pipe = {"STEPS": [{"ID": "a", "SIGNATURE": "echo", "INPUT": {"FAIL": "$input.FAIL"}}]}
    flow = Flow(table(tmp_path, [route("echo"), route("pipe", pipeline=pipe)]))
    answer, got = flow.run(body)
    assert answer.status == status and got["ERROR_TYPE"] == kind


def test_an_async_body_becomes_a_job(tmp_path: Path) -> None:
    flow = Flow(table(tmp_path, [route("echo")]))
    answer, _ = flow.run({"SIGNATURE": "echo", "ASYNC": True})
    assert answer.status == 202 and len(flow.submitted) == 1 and not flow.upstream.sent


def test_a_shadow_gets_a_copy(tmp_path: Path) -> None:
    shadow = {"VERSION": "v2", "FRACTION": 1.0}
    routes = table(tmp_path, [route("clf@v1", version="v1"), route("clf@v2", version="v2")],
                   {"clf": versions("clf", {"v1": 100, "v2": 0}, shadow=shadow)})
    flow = Flow(routes)
    answer, body = flow.run({"SIGNATURE": "clf"})
    assert body["SERVED_BY"] == "clf@v1"
    assert sorted(name for name, _, _ in flow.upstream.sent) == ["clf@v1", "clf@v2"]


def test_the_planner_keeps_the_plans_of_whole_routes_for_one_table(tmp_path: Path) -> None:
    routes = table(tmp_path, [route("echo"), route("clf@a", version="a"),
                              route("clf@b", version="b")],
                   {"clf": versions("clf", {"a": 50, "b": 50})})
    planner = Planner()
    req = Request("POST", "/run", "", [], b"{}", "r", True, ("127.0.0.1", 1))
    snapshot = routes.table()
    first = planner.plan("echo", b"{}", req, snapshot, lambda _t: True)
    assert planner.plan("echo", b"{}", req, snapshot, lambda _t: True) is first
    picked = {planner.plan("clf", b"{}", req, snapshot, lambda _t: True).version
              for _ in range(100)}
    assert picked == {"a", "b"}, "an endpoint with versions is picked anew each time"
    again = planner.plan("echo", b"{}", req, routes.table(fresh=True), lambda _t: True)
    assert again == first and again is not first, "a new table, new plans"
