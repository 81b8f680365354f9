"""The route table as the manager writes it and a front reads it: one typed contract,
the same JSON as before (other processes read the file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from basic_inference_server.config import parse_endpoint
from basic_inference_server.contracts import EndpointState, RouteSnapshot
from basic_inference_server.gateway.routes import RouteTable
from basic_inference_server.manager.state import Endpoint, write_routes

ROUTE_KEYS = {"version", "breaker", "state", "socket", "workers", "timeout", "retry_on_crash",
              "stream", "last_error", "retry_after", "max_queue_depth", "max_queue_bytes",
              "max_in_flight", "slots", "backlog_ms", "idle_timeout", "cold_start_timeout",
              "cache"}
POLICY = {"versions": {"v1": "clf@v1"}, "weights": {"v1": 100.0}, "sticky_field": None,
          "shadow": None, "rollout": None}
SETTINGS = {"NO_STARTUP_WAIT": False, "READY_POLICY": "any"}


def endpoints() -> dict[str, Endpoint]:
    local = Endpoint(config=parse_endpoint("echo", {}, "test"), socket_path="/run/echo")
    local.state = EndpointState.READY
    pipe = Endpoint(config=parse_endpoint(
        "pipe", {"PIPELINE": {"STEPS": [{"ID": "a", "SIGNATURE": "clf"}]}}, "test"))
    far = Endpoint(config=parse_endpoint("far", {"URLS": ["http://10.0.0.1:5002"]}, "test"))
    return {"echo": local, "pipe": pipe, "far": far}


def test_the_file_keeps_its_json_format(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    write_routes(path, endpoints(), SETTINGS, {"clf": POLICY})
    table = json.loads(path.read_text())
    assert set(table) == {"endpoints", "traffic", "no_startup_wait", "ready_policy",
                          "written_at"}
    routes = table["endpoints"]
    assert set(routes["echo"]) == ROUTE_KEYS and routes["echo"]["state"] == "READY"
    assert set(routes["pipe"]) == ROUTE_KEYS | {"pipeline"}
    assert set(routes["far"]) == ROUTE_KEYS | {"remote"}
    assert table["traffic"] == {"clf": POLICY} and table["ready_policy"] == "any"


def test_a_front_reads_what_the_manager_wrote(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    written = endpoints()
    write_routes(path, written, SETTINGS, {"clf": POLICY})
    snapshot = RouteTable(str(path)).table(fresh=True)
    assert snapshot == RouteSnapshot.of(json.loads(path.read_text()))
    assert snapshot.endpoints == {
        n: e.route() for n, e in written.items()}
    assert snapshot.endpoints["echo"].state is EndpointState.READY
    assert snapshot.endpoints["pipe"].pipeline is not None and not snapshot.no_startup_wait
    assert snapshot.traffic["clf"].versions == {"v1": "clf@v1"}


def test_a_table_never_read_is_not_served_from_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    write_routes(path, endpoints(), SETTINGS, {})
    routes = RouteTable(str(path))
    # Another thread has just begun the first read: the check is marked, nothing read yet.
    routes._checked = time.monotonic()
    assert set(routes.table().endpoints) == {"echo", "pipe", "far"}


def test_fair_backlog_ms_reaches_the_front(tmp_path: Path) -> None:
    # FAIR_BACKLOG_MS sizes the fair queue's cap in the front: the route carries it.
    fast = Endpoint(config=parse_endpoint("fast", {"FAIR_BACKLOG_MS": 0.5}, "test"),
                    socket_path="/run/fast")
    path = tmp_path / "routes.json"
    write_routes(path, {"echo": endpoints()["echo"], "fast": fast}, SETTINGS, {})
    read = RouteTable(str(path)).table(fresh=True).endpoints
    assert (read["echo"].backlog_ms, read["fast"].backlog_ms) == (5.0, 0.5)
