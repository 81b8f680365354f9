"""Management auth: every admin route needs the token (loopback included); a wrong or
missing one is 401 and changes nothing, the right one works; the data path and the open
routes ignore it.

The gateway runs with the fixtures' token (tests/conftest.py ``ADMIN_TOKEN``); the
rules themselves are unit-tested on ``check_admin`` (tests/unit/test_admin.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_TOKEN, assert_error, assert_ok
from tests.security.test_r02_admin import COMMANDS, CONFIG, READS

WRONG_TOKENS = ["wrong", f"{ADMIN_TOKEN}extra", "", None]
WRONG_HEADERS = [
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
]


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def assert_unchanged(gw, before):
    after = gw.servers()["SERVERS"]
    for name in ("echo", "spare"):
        for key in ("state", "pid", "nr_workers", "generation"):
            assert after[name][key] == before[name][key], (name, key)
    assert gw.proc.poll() is None
    assert_ok(gw.run("echo"))


@pytest.mark.parametrize("token", WRONG_TOKENS)
@pytest.mark.parametrize("path,body", COMMANDS)
def test_wrong_or_missing_token_is_401_and_changes_nothing(gw, token, path, body):
    before = gw.servers()["SERVERS"]
    err = assert_error(gw.post(path, body, token=token), 401)
    assert err["ERROR_TYPE"] == "unauthorized"
    assert_unchanged(gw, before)


@pytest.mark.parametrize("headers", WRONG_HEADERS)
def test_other_schemes_are_401(gw, headers):
    before = gw.servers()["SERVERS"]
    err = assert_error(gw.post("/kill_server", {"SIGNATURE": "echo"}, headers=headers), 401)
    assert err["ERROR_TYPE"] == "unauthorized"
    assert_unchanged(gw, before)


@pytest.mark.parametrize("path", [*READS, "/metrics"])
@pytest.mark.parametrize("token", WRONG_TOKENS)
def test_status_reads_need_the_token(gw, path, token):
    resp = gw.get(path, token=token)
    assert_error(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", READS)
def test_status_reads_with_the_token(gw, path):
    assert_ok(gw.get(path))


def test_right_token_works(gw):
    assert_ok(gw.post("/start_server", {"SIGNATURE": "spare"}))
    gw.wait_state("spare", "READY")
    assert_ok(gw.post("/kill_server", {"SIGNATURE": "spare"}))
    gw.wait_state("spare", "STOPPED")


@pytest.mark.parametrize("path", ["/get_paths", "/health/live", "/health/ready", "/dashboard"])
@pytest.mark.parametrize("token", ["wrong", None])
def test_open_paths_ignore_the_token(gw, path, token):
    gw.wait_ready()  # /health/ready is 503 while an endpoint an earlier test touched starts
    assert gw.get(path, token=token).status_code == 200


def test_run_ignores_the_token(gw):
    assert_ok(gw.post("/run", {"SIGNATURE": "echo"}, token="wrong"))
    assert_ok(gw.post("/run", {"SIGNATURE": "echo"}, token=None))


def test_get_paths_marks_the_admin_routes(gw):
    paths = assert_ok(gw.get("/get_paths", token=None))["AVAIL_PATHS"]
    admin = {p for p, info in paths.items() if info["admin"]}
    assert {"/list_servers", "/system_status", "/history", "/notifications", "/start_server",
            "/kill_server", "/update_workers", "/reload_server", "/shutdown", "/jobs/dead",
            "/jobs/requeue", "/keys", "/keys/revoke", "/keys/rotate", "/usage/tenants",
            "/usage/tenants.csv", "/traffic", "/rollout", "/rollout/promote",
            "/rollout/abort", "/dashboard/events", "/models"} == admin
