"""Management auth with ADMIN_TOKEN: a wrong token is 401, the right one works.

All test traffic comes from loopback (allowed without a token); the non-loopback rule
is unit-tested on ``check_admin`` (tests/unit/test_admin.py).
"""

from __future__ import annotations

import pytest

from tests.conftest import SHUTDOWN_CMD, assert_error, assert_ok

TOKEN = "s3cret-t0ken"
CONFIG = {
    "ADMIN_TOKEN": TOKEN,
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 1},
        "spare": {"SERVER_CLASS": "echo", "DISABLED": True, "NR_WORKERS": 1},
    },
}
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
WRONG_HEADERS = [
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN}extra"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": "Bearer "},
]


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


@pytest.mark.parametrize("headers", WRONG_HEADERS)
@pytest.mark.parametrize("path,body", [
    ("/start_server", {"SIGNATURE": "spare"}),
    ("/kill_server", {"SIGNATURE": "echo"}),
    ("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2}),
    ("/reload_server", {"SIGNATURE": "echo"}),
    ("/shutdown", SHUTDOWN_CMD),
])
def test_wrong_token_is_401_and_changes_nothing(gw, headers, path, body):
    before = gw.servers()["SERVERS"]
    resp = gw.post(path, body, headers=headers)
    err = assert_error(resp, 401)
    assert err["ERROR_TYPE"] == "unauthorized"
    after = gw.servers()["SERVERS"]
    for name in ("echo", "spare"):
        for key in ("state", "pid", "nr_workers", "generation"):
            assert after[name][key] == before[name][key], (name, key)
    assert gw.proc.poll() is None
    assert_ok(gw.run("echo"))


def test_right_token_works(gw):
    resp = gw.post("/start_server", {"SIGNATURE": "spare"}, headers=RIGHT)
    assert resp.status_code == 200, resp.text
    gw.wait_state("spare", "READY")
    resp = gw.post("/kill_server", {"SIGNATURE": "spare"}, headers=RIGHT)
    assert resp.status_code == 200, resp.text
    gw.wait_state("spare", "STOPPED")


def test_loopback_without_token_works(gw):
    resp = gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 1})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("path", ["/list_servers", "/system_status", "/notifications",
                                  "/get_paths", "/health/live", "/health/ready"])
def test_read_only_paths_ignore_the_token(gw, path):
    assert gw.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_run_ignores_the_token(gw):
    assert_ok(gw.post("/run", {"SIGNATURE": "echo"}, headers={"Authorization": "Bearer wrong"}))
