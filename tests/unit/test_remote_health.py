"""Health of remote endpoints: the supervisor's probes, the manager's states and routes."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import pytest

from basic_inference_server.config import parse_endpoint
from basic_inference_server.contracts import SupervisorSpec
from basic_inference_server.gateway.metrics import ManagerCollector
from basic_inference_server.manager.remote_commands import remote_targets
from basic_inference_server.manager.state import Endpoint, State
from basic_inference_server.supervisor.probe import Outcome, probe_url
from basic_inference_server.supervisor.supervisor import Supervisor
from tests.unit.test_upstream_tcp import unused_port

A, B = "http://10.0.0.1:5000", "http://10.0.0.2:5000"
UP = {"ok": True, "error": None, "latency_ms": 1.5}
DOWN = {"ok": False, "error": "[Errno 111] Connection refused", "latency_ms": None}


def remote(**settings: Any) -> Endpoint:
    cfg = parse_endpoint("rem", {"URLS": [A, B], "PING_MISSES": 2, **settings}, "test")
    ep = Endpoint(config=cfg)
    ep.virtual_started(0.0)
    return ep


def test_a_remote_is_ready_at_once_and_stays_ready_while_one_url_answers():
    ep = remote()
    assert ep.state == State.READY and ep.route().remote["down"] == []
    assert not ep.remote_checked({A: DOWN, B: UP}, 1.0, 1.0).publish  # one miss: not yet down
    change = ep.remote_checked({A: DOWN, B: UP}, 2.0, 2.0)
    assert change.publish and ep.state == State.READY
    assert ep.route().remote["down"] == [A]  # the front tries it last
    urls = ep.describe()["remote"]["urls"]
    assert urls[A]["reachable"] is False and "refused" in urls[A]["error"]
    assert urls[B] == {"reachable": True, "error": None, "latency_ms": 1.5, "checked_at": 2.0}


def test_no_url_answering_is_unreachable_then_one_answer_is_ready_again():
    ep = remote()
    ep.remote_checked({A: DOWN, B: DOWN}, 1.0, 1.0)
    change = ep.remote_checked({A: DOWN, B: DOWN}, 2.0, 2.0)
    assert ep.state == State.UNREACHABLE and change.publish and change.event[0] == "remote_unreachable"
    assert "no URL answers GET /health/live" in ep.last_error and A in ep.last_error
    route = ep.route()
    assert route.state == State.UNREACHABLE and route.retry_after >= 1
    assert not ep.remote_checked({A: DOWN, B: DOWN}, 3.0, 3.0).publish
    change = ep.remote_checked({A: DOWN, B: UP}, 4.0, 4.0)
    assert ep.state == State.READY and ep.last_error is None and change.event[0] == "remote_reachable"
    assert ep.route().remote["down"] == [A]


def test_reports_for_a_stopped_remote_or_unknown_urls_change_nothing():
    ep = remote()
    ep.remote_checked({"http://other:1": DOWN}, 1.0, 1.0)
    assert ep.describe()["remote"]["urls"][A]["reachable"] is None
    ep.stop()
    assert not ep.remote_checked({A: DOWN, B: DOWN}, 2.0, 2.0).publish
    assert ep.state == State.STOPPED


def test_supervision_lists_remotes_in_service_only():
    ready, stopped = remote(PING_INTERVAL=3, PING_TIMEOUT=5), remote()
    stopped.stop()
    local = Endpoint(config=parse_endpoint("loc", {}, "test"))
    targets = remote_targets({"rem": ready, "off": stopped, "loc": local})
    assert targets == {"rem": {"urls": [A, B], "ping_interval": 3, "ping_timeout": 3}}


def test_metrics_show_each_url():
    ep = remote()
    ep.remote_checked({A: DOWN, B: UP}, 1.0, 1.0)
    ep.remote_checked({A: DOWN, B: UP}, 2.0, 2.0)
    families = {f.name: f for f in ManagerCollector({"rem": ep.describe()}).collect()}
    up = {tuple(s.labels.values()): s.value for s in families["bis_remote_up"].samples}
    assert up == {("rem", A): 0.0, ("rem", B): 1.0}


class Manager:
    def __init__(self, remotes: dict[str, Any]) -> None:
        self.remotes = remotes
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, _path: str, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((request["cmd"], request["args"]))
        body = {"endpoints": {}, "remotes": self.remotes, "trees": {}}
        return {"status": 200, "body": body if request["cmd"] == "supervision" else {}}


def test_the_supervisor_probes_each_remote_on_its_interval_and_reports():
    manager = Manager({"rem": {"urls": [A, B], "ping_interval": 2, "ping_timeout": 0.5}})
    clock = [0.0]
    probed: list[tuple[str, float]] = []

    def prober(url: str, timeout: float) -> dict[str, Any]:
        probed.append((url, timeout))
        return UP if url == B else DOWN

    sup = Supervisor(SupervisorSpec(control="-", sample_interval=100), clock=lambda: clock[0],
                     call=manager, pinger=lambda *_: Outcome.OK, master=lambda _pid: Outcome.OK,
                     url_prober=prober, sampler=lambda trees, disk: {})
    assert sup.run_once() == 1.0  # MAX_WAIT: the next probe is 2 s away
    assert sorted(probed) == [(A, 0.5), (B, 0.5)]
    [report] = [args for cmd, args in manager.calls if cmd == "remote_health"]
    assert report == {"SIGNATURE": "rem", "URLS": {A: DOWN, B: UP}}
    clock[0] = 1.0
    sup.run_once()
    assert len(probed) == 2  # not due yet
    clock[0] = 2.0
    sup.run_once()
    assert len(probed) == 4
    manager.remotes = {}
    clock[0] = 4.0
    sup.run_once()
    assert len(probed) == 4 and not sup.next_remote


@pytest.fixture
def health_server():
    """A real HTTP server whose /health/live answers 200, anything else 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server hook's name
            self.server.hosts.append(self.headers["Host"])  # type: ignore[attr-defined]
            self.send_response(200 if self.path == "/health/live" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.hosts = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_probe_url_against_a_real_server(health_server):
    port = health_server.server_address[1]
    got = probe_url(f"http://127.0.0.1:{port}", 2)
    assert got["ok"] and got["error"] is None and got["latency_ms"] >= 0
    assert health_server.hosts == [f"127.0.0.1:{port}"]
    got = probe_url(f"http://127.0.0.1:{port}", 2, path="/health/ready")
    assert not got["ok"] and "answered 503" in got["error"]
    got = probe_url(f"http://127.0.0.1:{unused_port()}", 2)
    assert not got["ok"] and "refused" in got["error"] and got["latency_ms"] is None
