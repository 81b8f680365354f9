"""API keys on the data plane: real gateways (2 front processes), keys from the admin API."""

from __future__ import annotations

import os
import stat
import time

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, assert_error, assert_ok, wait_until
from tests.tenants.conftest import call, keyed_config, make_key, ready


@pytest.fixture(scope="module")
def gw(module_gateways):
    return ready(module_gateways(keyed_config()))


def test_keys_are_off_by_default(gateways):
    gw = ready(gateways({"CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo"}}}))
    assert_ok(call(gw, None))
    # The store and its admin API are there all the same; a key changes nothing yet.
    key = make_key(gw)["KEY"]
    assert_ok(call(gw, key))


def test_a_key_calls_and_is_stored_as_a_hash(gw):
    made = make_key(gw, NAME="ci")
    secret = made["KEY"]
    assert secret.startswith("bis_") and len(secret) > 40 and made["TENANT"] == "acme"
    assert_ok(call(gw, secret))
    assert_ok(call(gw, secret, header="x-api-key"))
    listed = gw.get("/keys", params={"TENANT": "acme"}).json()["KEYS"]
    mine = [k for k in listed if k["KEY_ID"] == made["KEY_ID"]]
    assert mine and "KEY" not in mine[0] and secret not in str(listed)
    db = gw.workdir / "_cache" / "tenants.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in db.parent.glob("tenants.db*") if p.is_file())
    assert secret.encode() not in raw


def test_no_key_unknown_key_and_admin_token_are_401(gw):
    for key in (None, "bis_not-a-key", ADMIN_TOKEN):
        body = assert_error(call(gw, key), 401)
        assert body["ERROR_TYPE"] == "unauthorized"
    # ... and an API key is no admin credential.
    key = make_key(gw)["KEY"]
    resp = requests.get(gw.url("/keys"), headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert_error(resp, 401)
    resp = requests.get(gw.url("/list_servers"), headers={"Authorization": f"Bearer {key}"},
                        timeout=10)
    assert_error(resp, 401)


def test_bad_key_requests_are_400(gw):
    for body in ({}, {"TENANT": "9bad"}, {"TENANT": "a", "ENDPOINTS": "echo"},
                 {"TENANT": "a", "RATE": "fast"}, {"TENANT": "a", "BURST": 0},
                 {"TENANT": "a", "WHAT": 1}, {"TENANT": "a", "MAX_CONCURRENT": -1},
                 {"TENANT": "a", "PRIORITY": "urgent"}, {"TENANT": "a", "PRIORITY": 1},
                 {"TENANT": "a", "WEIGHT": 0}, {"TENANT": "a", "WEIGHT": "3"}):
        assert_error(gw.post("/keys", body), 400)
    assert_error(gw.post("/keys/revoke", {"KEY_ID": "key_nope"}), 404)
    assert_error(gw.post("/keys", {"TENANT": "acme"}, token=None), 401)


def test_scope_is_403_on_other_endpoints(gw):
    key = make_key(gw, ENDPOINTS=["echo"])["KEY"]
    assert_ok(call(gw, key, "echo"))
    body = assert_error(call(gw, key, "pool"), 403)
    assert body["ERROR_TYPE"] == "forbidden"


def test_tenant_reaches_the_endpoint_and_clients_cannot_claim_one(gw):
    # CUSTOMER_MODELS keeps working: the endpoint loads the key's tenant's models.
    acme = make_key(gw, TENANT="acme")["KEY"]
    assert assert_ok(call(gw, acme, "pool"))["loaded"] == ["base"]
    globex = make_key(gw, TENANT="globex")["KEY"]
    assert assert_ok(call(gw, globex, "pool"))["loaded"] == ["base", "globex_model"]
    body = assert_error(call(gw, acme, "pool", headers={"X-Customer-ID": "globex"}), 400)
    assert "X-Customer-ID" in body["ERROR"]


def test_revoked_key_is_refused_within_a_second_on_every_front_process(gw):
    made = make_key(gw)
    key = made["KEY"]
    # New connections land on both front processes: both cache the key.
    for _ in range(30):
        assert_ok(call(gw, key))
    assert_ok(gw.post("/keys/revoke", {"KEY_ID": made["KEY_ID"]}))
    revoked = time.monotonic()
    last_ok = None
    while time.monotonic() - revoked < 1.0:
        if call(gw, key).status_code == 200:
            last_ok = time.monotonic() - revoked
    assert last_ok is None or last_ok < 1.0
    for _ in range(30):
        assert_error(call(gw, key), 401)
    listed = gw.get("/keys").json()["KEYS"]
    assert [k["REVOKED"] for k in listed if k["KEY_ID"] == made["KEY_ID"]][0] is not None


def test_rotation_keeps_the_old_key_through_its_grace(gw):
    made = make_key(gw, ENDPOINTS=["echo"])
    rotated = gw.post("/keys/rotate", {"KEY_ID": made["KEY_ID"], "GRACE": 3})
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["KEY"] != made["KEY"] and new["ENDPOINTS"] == ["echo"] and new["TENANT"] == "acme"
    assert_ok(call(gw, made["KEY"]))
    assert_ok(call(gw, new["KEY"]))
    wait_until(lambda: call(gw, made["KEY"]).status_code == 401, timeout=10,
               message="the old key stops after its grace")
    assert time.time() >= new["OLD_KEY_EXPIRES"]
    assert_ok(call(gw, new["KEY"]))
    assert_error(gw.post("/keys/rotate", {"KEY_ID": made["KEY_ID"]}), 409)


def test_jobs_are_readable_by_their_tenant_only(gw):
    alice = make_key(gw, TENANT="alice")["KEY"]
    bob = make_key(gw, TENANT="bob")["KEY"]
    auditor = make_key(gw, TENANT="audit", READ_ALL_JOBS=True)["KEY"]
    resp = call(gw, alice, ASYNC=True, x=1)
    assert resp.status_code == 202, resp.text
    job = resp.json()["JOB_ID"]

    def read(key):
        return requests.get(gw.url(f"/jobs/{job}"), headers={"X-API-Key": key}, timeout=10)

    wait_until(lambda: read(alice).json().get("STATUS") == "done", timeout=30,
               message="the job ran")
    assert read(alice).json()["TENANT"] == "alice"
    assert_error(read(bob), 404)
    assert_ok(read(auditor))
    assert_error(requests.get(gw.url(f"/jobs/{job}"), timeout=10), 401)
