"""Row 2: loopback is not admin; a browser page can neither post nor rebind its way in.

Every management route needs ``Authorization: Bearer <token>``, from loopback too (a
same-host proxy, sidecar or browser tab is loopback). Admin POSTs take only
``application/json`` (a cross-site form can post ``text/plain`` without a preflight),
and a ``Host`` the gateway does not answer to (DNS rebinding) is refused before the
token is even looked at. A caller with the token keeps every power the README shows,
from another address as well: scaling, reload, start and stop, the dashboard, and
``/shutdown`` for the ``run.sh`` loop.
"""

from __future__ import annotations

import socket

import psutil
import pytest
import requests

from tests.conftest import SHUTDOWN_CMD, assert_error, assert_ok, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 1},
    "spare": {"SERVER_CLASS": "echo", "DISABLED": True, "NR_WORKERS": 1},
}}
COMMANDS = [
    ("/start_server", {"SIGNATURE": "spare"}),
    ("/kill_server", {"SIGNATURE": "echo"}),
    ("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2}),
    ("/reload_server", {"SIGNATURE": "echo"}),
    ("/shutdown", SHUTDOWN_CMD),
    ("/jobs/requeue", {"SIGNATURE": "echo"}),
]
READS = ["/list_servers", "/system_status", "/history", "/notifications",
         "/jobs/dead?SIGNATURE=echo"]
REBINDING_HOST = "attacker.example:80"


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def snapshot(gw):
    servers = gw.servers()["SERVERS"]
    return {name: {key: servers[name][key] for key in ("state", "pid", "nr_workers", "generation")}
            for name in ("echo", "spare")}


def assert_nothing_changed(gw, before):
    assert snapshot(gw) == before
    assert gw.proc.poll() is None
    assert_ok(gw.run("echo"))


@pytest.mark.parametrize("path,body", COMMANDS)
def test_loopback_without_the_token_is_401_and_changes_nothing(gw, path, body):
    before = snapshot(gw)
    err = assert_error(gw.post(path, body, token=None), 401)
    assert err["ERROR_TYPE"] == "unauthorized"
    assert_nothing_changed(gw, before)


@pytest.mark.parametrize("path", READS)
def test_loopback_without_the_token_reads_no_status(gw, path):
    resp = gw.get(path, token=None)
    err = assert_error(resp, 401)
    assert err["ERROR_TYPE"] == "unauthorized" and "SERVERS" not in err
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x"])
@pytest.mark.parametrize("path,body", COMMANDS)
def test_a_form_post_is_415_even_with_the_token(gw, path, body, ctype):
    # What a cross-site <form> can send: a JSON text in a body that is not declared JSON.
    before = snapshot(gw)
    data = requests.compat.json.dumps(body).encode()
    err = assert_error(gw.post(path, data=data, headers={"Content-Type": ctype}), 415)
    assert err["ERROR_TYPE"] == "unsupported_media_type"
    assert_nothing_changed(gw, before)


@pytest.mark.parametrize("path,body", COMMANDS)
def test_a_rebound_host_is_403_even_with_the_token(gw, path, body):
    before = snapshot(gw)
    resp = gw.post(path, body, headers={"Host": REBINDING_HOST})
    err = assert_error(resp, 403)
    assert err["ERROR_TYPE"] == "forbidden" and "ALLOWED_HOSTS" in err["ERROR"]
    assert_nothing_changed(gw, before)


@pytest.mark.parametrize("path", [*READS, "/dashboard", "/dashboard/static/dashboard.js"])
def test_a_rebound_host_reads_nothing(gw, path):
    err = assert_error(gw.get(path, headers={"Host": REBINDING_HOST}), 403)
    assert err["ERROR_TYPE"] == "forbidden"


def test_allowed_hosts_opens_a_name(gateways):
    gw = gateways({**CONFIG, "ALLOWED_HOSTS": ["*.example"]})
    assert_ok(gw.get("/list_servers", headers={"Host": REBINDING_HOST}))
    assert_error(gw.get("/list_servers", headers={"Host": "attacker.example.org"}), 403)


def non_loopback_address() -> str:
    """An IPv4 address of this machine other than loopback (loopback if it has none)."""
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith(("127.", "169.254.")):
                return str(addr.address)
    return "127.0.0.1"


def test_a_remote_caller_with_the_token_can_do_what_the_readme_shows(gateways):
    address = non_loopback_address()
    gw = gateways(CONFIG, host=address)
    assert gw.base.startswith(f"http://{address}:")
    assert_error(gw.get("/list_servers", token=None), 401)
    assert_error(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2}, token=None), 401)

    assert "echo" in assert_ok(gw.post("/list_servers", {}))["SERVERS"]
    assert_ok(gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2}))
    wait_until(lambda: gw.server("echo")["workers_ready"] == 2, timeout=30,
               message="echo scaled to two workers")
    generation = gw.server("echo")["generation"]
    assert_ok(gw.post("/reload_server", {"SIGNATURE": "echo"}))
    wait_until(lambda: gw.server("echo")["generation"] > generation
               and gw.state("echo") == "READY", timeout=60, message="echo reloaded")
    assert_ok(gw.post("/start_server", {"SIGNATURE": "spare"}))
    gw.wait_state("spare", "READY", timeout=30)
    assert_ok(gw.post("/kill_server", {"SIGNATURE": "spare"}))
    gw.wait_state("spare", "STOPPED", timeout=30)
    page = gw.get("/dashboard", token=None)
    assert page.status_code == 200 and "admin token" in page.text
    assert_ok(gw.run("echo"))

    assert_ok(gw.post("/shutdown", SHUTDOWN_CMD))
    assert gw.proc.wait(timeout=60) == 0
