"""M1: a job is never read through a path spelled another way than its route.

The front once checked keys on the raw path (``/jobs/...``) and routed on the decoded
one, so ``GET /jobs%2F<id>`` or ``/%6Aobs/<id>`` skipped the key check and returned
another tenant's job. Paths are now taken as sent: an escape, an empty, ``.`` or ``..``
segment gets 404 before any route or check sees the path.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from tests.conftest import Gateway, assert_ok, wait_until
from tests.tenants.conftest import call, keyed_config, make_key, ready


def raw_get(gw: Gateway, path: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET ``path`` exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", path, headers={"X-API-Key": key} if key else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def spellings(job: str) -> list[str]:
    return [f"/jobs%2F{job}", f"/jobs%2f{job}", f"/%6Aobs/{job}", f"/jobs/%{job[:2]}{job[2:]}",
            f"//jobs/{job}", f"/jobs//{job}", f"/x/../jobs/{job}", f"/./jobs/{job}"]


def assert_never_returned(gw: Gateway, job: str, key: str | None) -> None:
    for path in spellings(job):
        status, body = raw_get(gw, path, key)
        assert status in (401, 404), (path, status, body)
        assert body.get("JOB_ID") != job and "RESULT" not in body, (path, body)
        assert "ERROR_TYPE" in body, (path, body)


def test_another_tenants_job_is_not_readable_through_an_encoded_path(gateways):
    gw = ready(gateways(keyed_config()))
    owner = make_key(gw)["KEY"]
    other = make_key(gw, TENANT="globex")["KEY"]
    resp = call(gw, owner, "echo", ASYNC=True, SECRET="acme-only")
    assert resp.status_code == 202, resp.text
    job = resp.json()["JOB_ID"]
    wait_until(lambda: raw_get(gw, f"/jobs/{job}", owner)[1].get("STATUS") == "done",
               timeout=30, message="the job ran")
    # The route as it is: the owner reads it, the other tenant gets 404.
    assert raw_get(gw, f"/jobs/{job}", owner)[1]["RESULT"]["echo"]["SECRET"] == "acme-only"
    assert raw_get(gw, f"/jobs/{job}", other)[0] == 404
    for key in (other, None, owner):  # whoever asks: the other spellings are not routes
        assert_never_returned(gw, job, key)


def test_without_keys_a_job_is_read_only_through_its_route(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    resp = gw.post("/run", {"SIGNATURE": "echo", "ASYNC": True, "SECRET": "x"}, token=None)
    assert resp.status_code == 202, resp.text
    job = resp.json()["JOB_ID"]
    wait_until(lambda: raw_get(gw, f"/jobs/{job}")[1].get("STATUS") == "done", timeout=30,
               message="the job ran")
    assert_never_returned(gw, job, None)
    status, body = raw_get(gw, f"/jobs%2F{job}")
    assert body["ERROR_TYPE"] == "not_found" and "taken as sent" in body["ERROR"]
    # Query strings keep their escapes: only the path is taken as sent.
    assert_ok(gw.get("/run", params={"SIGNATURE": "echo", "Q": "a/b%c"}))
