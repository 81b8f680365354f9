"""The manager's event table, its specs and its commands, in-process: no child is spawned."""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import pytest

from basic_inference_server import contracts
from basic_inference_server.config import GATEWAY_SETTINGS, parse_config
from basic_inference_server.contracts import FrontSpec, ServerSpec, SupervisorSpec
from basic_inference_server.events import Event
from basic_inference_server.manager.control import ControlServer
from basic_inference_server.manager.inbox import ENDPOINT_EVENTS
from basic_inference_server.manager.manager import Manager
from basic_inference_server.manager.specs import front_spec, server_spec, supervisor_spec
from basic_inference_server.manager.state import State
from basic_inference_server.tenants import tenants_spec
from tests.unit.test_manager_state import child

PACKAGE = Path(contracts.__file__).parent


@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setenv("BIS_ADMIN_TOKEN", "t" * 32)
    config = parse_config({"CONFIG_ENDPOINTS": {"e": {"NR_WORKERS": 2}}})
    m = Manager(config, tmp_path / "endpoints", port=0, cache_dir=tmp_path / "cache",
                clock=lambda: 50.0)
    yield m
    m._cleanup()


def serving(m: Manager):
    ep = m.endpoints["e"]
    ep.port, ep.socket_path = 5100, "/run/e.sock"
    ep.started(child(ep.next_generation()), now=0.0)
    return ep


def routes(m: Manager) -> dict:
    return json.loads(Path(m.paths.routes).read_text())["endpoints"]


def test_every_event_has_a_handler():
    assert set(ENDPOINT_EVENTS) | {Event.NOTIFICATION} == set(Event)


def test_every_event_sent_is_one_of_the_enum():
    """A notifier's ``send("name", ...)`` with a string would bypass the table (mypy
    refuses it too: ``Notifier.send`` takes an Event)."""
    calls = 0
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if "notifier" not in text.lower():
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "send" and node.args \
                    and "notifier" in ast.unparse(node.func.value):
                calls += 1
                first = node.args[0]
                assert not isinstance(first, ast.Constant), f"{path}:{node.lineno}"
                if isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) \
                        and first.value.id == "Event":
                    assert first.attr in Event.__members__, f"{path}:{node.lineno}"
    assert calls >= len(Event)


def test_events_drive_the_endpoint_and_the_route_table(manager):
    ep = serving(manager)
    gen = ep.generation
    manager.on_event({"event": "worker_ready", "endpoint": "e", "pid": 11,
                      "socket": "/run/w11", "generation": gen})
    assert ep.state == State.READY and ep.ready_since == 50.0
    assert routes(manager)["e"]["workers"] == ["/run/w11"]
    manager.on_event({"event": "nworkers", "endpoint": "e", "value": 2, "generation": gen})
    assert ep.reported_workers == 2
    manager.on_event({"event": "worker_exit", "endpoint": "e", "pid": 11, "generation": gen})
    assert routes(manager)["e"]["workers"] == []
    manager.on_event({"event": "load_failed", "endpoint": "e", "error": "boom",
                      "generation": gen})
    assert ep.last_error == "boom"


def test_unknown_events_and_endpoints_are_dropped(manager, caplog):
    ep = serving(manager)
    with caplog.at_level(logging.WARNING):
        manager.on_event({"event": "server_listening", "endpoint": "e", "pid": 1})
    assert "unknown event 'server_listening'" in caplog.text
    manager.on_event({"event": "worker_ready", "endpoint": "nope", "pid": 1, "generation": 1})
    manager.on_event({"event": "worker_ready", "endpoint": ["e"], "pid": 1, "generation": 1})
    assert ep.state == State.STARTING


def test_notifications_are_kept_unless_too_deep(manager):
    manager.on_event({"event": "notification", "endpoint": "e", "msg": "hi"})
    deep: dict = {}
    for _ in range(40):
        deep = {"x": deep}
    manager.on_event({"event": "notification", "info": deep})
    assert [n["msg"] for n in manager.notifications] == ["hi"]


def test_commands_without_processes(manager):
    ep = serving(manager)
    control = ControlServer(manager.handlers)
    reply = control.handle_request(b'{"cmd": "update_workers", "args": '
                                   b'{"SIGNATURE": "e", "NR_WORKERS": 3}}')
    assert reply["status"] == 200 and ep.target_workers == 3
    assert control.handle_command("update_workers", {"SIGNATURE": "e", "NR_WORKERS": 0})[
        "status"] == 400
    stale = control.handle_command("report_hung", {"SIGNATURE": "e", "server": True,
                                                   "generation": ep.generation + 1})
    assert stale["status"] == 409 and ep.child is not None
    assert control.handle_command("reload_server", {"SIGNATURE": "e"})["status"] == 409
    assert control.handle_command("nope", {})["status"] == 404
    assert control.handle_request(b"[1]")["status"] == 400
    listing = control.handle_command("list_servers", {})["body"]
    assert listing["SERVERS"]["e"]["state"] == "STARTING"
    control.close()


def test_specs_are_the_contract_dataclasses_with_the_settings_defaults(manager):
    ep = serving(manager)
    front = front_spec(manager.config, manager.paths, manager.admin_token, {"q": 1},
                       tenants_spec(manager.config, manager.cache_dir))
    server = server_spec(manager.config, manager.paths, ep, {"q": 1})
    sup = supervisor_spec(manager.config, manager.paths, "/")
    # What travels is JSON; the child rebuilds the same dataclass from it.
    for spec, cls in ((front, FrontSpec), (server, ServerSpec), (sup, SupervisorSpec)):
        assert cls(**json.loads(json.dumps(asdict(spec)))) == spec
    assert server.generation == ep.generation and server.notify == manager.paths.notify
    by_field = {"workers": "GATEWAY_WORKERS", "threads": "GATEWAY_THREADS",
                "sample_interval": "HEALTH_SAMPLE_INTERVAL", "tenant_shares": "TENANTS",
                "tenants": "API_KEYS's TenantsSpec, not a setting"}
    for cls in (FrontSpec, ServerSpec, SupervisorSpec):
        for f in fields(cls):
            key = by_field.get(f.name, f.name.upper())
            if key in GATEWAY_SETTINGS and f.name not in ("allowed_hosts", "model_aliases"):
                default = f.default_factory() if f.default is MISSING else f.default
                assert default == GATEWAY_SETTINGS[key].default, (cls.__name__, f.name)
