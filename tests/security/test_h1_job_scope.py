"""Row H1: a job runs only the endpoint its key was checked for, under that endpoint's limits.

``/jobs`` (and ``/run`` with ``ASYNC``) read SIGNATURE from the raw bytes for the key's
scope and limits, then queued the decoded body: ``{"SIGNATURE": "echo", "SIGN\\u0041TURE":
"victim"}`` was admitted for ``echo`` and ran ``victim`` (the decoder reads the escape, and
the last duplicate wins). ``SIGNATURE "ver@v1"`` skipped the limits of ``ver``, looked up
by the pinned name. Now the decoded body decides scope, limits and queue, limits by
endpoint label; ``/run`` refuses a body whose bytes might not say what decoding reads; and
an endpoint server refuses a body naming another endpoint.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests

from tests.conftest import FIXTURE_ENDPOINTS, assert_error, wait_until, write_endpoint
from tests.unit.inprocess import build, call, request

RECORDER = '''
from basic_inference_server import FlaskWorker

_CONFIG = {"RECORD_TO": ""}


class RecorderWorker(FlaskWorker):
    """Appends one line per request it runs to RECORD_TO."""

    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        with open(self.cfg_record_to, "a", encoding="utf-8") as fh:
            fh.write(str(inputs.get("N")) + "\\n")
        return inputs

    def _post_process(self, pred):
        return {"ran": True}
'''
SCOPE_ESCAPED = b'{"SIGNATURE": "echo", "SIGN\\u0041TURE": "victim"}'
SCOPE_TWICE = b'{"SIGNATURE": "echo", "SIGNATURE": "victim"}'


@pytest.fixture(scope="module")
def gw(module_gateways, tmp_path_factory):
    folder = tmp_path_factory.mktemp("h1")
    endpoints = folder / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    write_endpoint(endpoints, "recorder", RECORDER)
    record = folder / "victim.log"
    gw = module_gateways({"API_KEYS": True, "CONFIG_ENDPOINTS": {
        "echo": {"SERVER_CLASS": "echo"},
        "victim": {"SERVER_CLASS": "recorder", "RECORD_TO": str(record)},
        "ver": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}}}}}, endpoints=endpoints)
    for name in ("echo", "victim", "ver@v1"):
        gw.wait_state(name, "READY", timeout=60)
    gw.record = record
    return gw


def new_key(gw, **fields) -> str:
    resp = gw.post("/keys", {"TENANT": "acme", **fields})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["KEY"])


def post(gw, path: str, body: bytes, key: str) -> requests.Response:
    return requests.post(gw.url(path), data=body, timeout=30, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def victim_runs(gw) -> list[str]:
    return gw.record.read_text().split() if gw.record.exists() else []


def run_victim_job(gw, n: int) -> None:
    """Queue a job of ``victim`` with a key that may, and wait until it ran: the victim's
    one worker runs its queue in order, so any job queued before it has run by then."""
    key = new_key(gw)
    resp = post(gw, "/jobs", b'{"SIGNATURE": "victim", "N": %d}' % n, key)
    assert resp.status_code == 202, resp.text
    status = gw.url(f"/jobs/{resp.json()['JOB_ID']}")
    wait_until(lambda: requests.get(status, headers={"X-API-Key": key}, timeout=10).json()
               .get("STATUS") == "done", timeout=30, message="the victim's own job ran")


def test_a_key_for_echo_never_runs_another_endpoint(gw):
    key = new_key(gw, ENDPOINTS=["echo"])
    for body in (SCOPE_ESCAPED, SCOPE_TWICE):
        # The decoded body names victim: the key may not call it.
        assert_error(post(gw, "/jobs", body, key), 403)
        async_body = body[:-1] + b', "ASYNC": true}'
        assert_error(post(gw, "/run", async_body, key), 403)
        # /run routes by the bytes: it refuses a body they might misread.
        refused = assert_error(post(gw, "/run", body, key), 400)
        assert "escape" in refused["ERROR"] or "twice" in refused["ERROR"] \
            or "times" in refused["ERROR"]
    # The key still runs what it may.
    assert post(gw, "/run", b'{"SIGNATURE": "echo", "A": 1}', key).json()["echo"] == {"A": 1}
    run_victim_job(gw, 7)
    assert victim_runs(gw) == ["7"], "only the victim's own job ran"


def test_limits_hold_for_the_endpoint_the_body_decodes_to(gw):
    before = victim_runs(gw)
    key = new_key(gw, ENDPOINT_LIMITS={"victim": {"RATE": "1/hour", "BURST": 1},
                                       "ver": {"RATE": "1/hour", "BURST": 1}})
    assert post(gw, "/jobs", b'{"SIGNATURE": "victim", "N": 1}', key).status_code == 202
    # The bytes name echo (no limit); the body decodes to victim, whose one request is spent.
    for body in (b'{"SIGNATURE": "echo", "SIGN\\u0041TURE": "victim", "N": 2}',
                 b'{"SIGNATURE": "echo", "SIGNATURE": "victim", "N": 3}'):
        assert assert_error(post(gw, "/jobs", body, key), 429)["ERROR_TYPE"] == "rate_limited"
    # A pinned version is its endpoint's, limits included.
    assert post(gw, "/jobs", b'{"SIGNATURE": "ver"}', key).status_code == 202
    assert_error(post(gw, "/jobs", b'{"SIGNATURE": "ver@v1"}', key), 429)
    assert_error(post(gw, "/run", b'{"SIGNATURE": "ver@v1"}', key), 429)
    run_victim_job(gw, 4)
    assert victim_runs(gw) == [*before, "1", "4"], "the refused jobs never ran"


def test_the_endpoint_server_refuses_a_body_naming_another_endpoint():
    app = build("echo", name="echo@v2")
    for body in (SCOPE_ESCAPED, b'{"SIGNATURE": "victim"}', b'{"SIGNATURE": "echox@v2"}',
                 b'{"SIGNATURE": 5}'):
        answer, _chunks = call(app, request(body=body))
        assert answer.status == 400 and json.loads(answer.body)["SERVER_SIGNATURE"] == "echo@v2"
    assert call(app, request(method="GET", query="SIGNATURE=victim"))[0].status == 400
    # Its own name, its endpoint's (a shadow copy), another version's (a pinned request
    # mirrored), or none (a direct call of a standalone server) run.
    for body in (b'{"SIGNATURE": "echo@v2"}', b'{"SIGNATURE": "echo"}',
                 b'{"SIGNATURE": "echo@v1", "A": 1}', b'{"A": 1}'):
        answer, _chunks = call(app, request(body=body))
        assert answer.status == 200, answer.body
