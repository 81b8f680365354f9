"""MAX_QUEUE_BYTES: the bytes of an endpoint's queued jobs are capped (429 queue_full)."""

from __future__ import annotations

import pytest

from tests.conftest import assert_error

LIMIT = 20_000
PAD = "x" * 4000


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_queue_bytes_are_capped_for_a_stopped_endpoint_too(gateways, backend, request):
    if backend == "sqlite":
        queue = "sqlite"
    else:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        queue = f"{url}?prefix={prefix}"
    gw = gateways({"QUEUE": queue, "CONFIG_ENDPOINTS": {
        # Stopped: nothing consumes its jobs, they only pile up.
        "q": {"SERVER_CLASS": "jobs_noop", "DISABLED": True, "MAX_QUEUE_BYTES": LIMIT},
        "echo": {"NR_WORKERS": 1}}}, wait="settled")
    accepted = 0
    for i in range(20):
        resp = gw.post("/jobs", {"SIGNATURE": "q", "I": i, "PAD": PAD})
        if resp.status_code != 202:
            body = assert_error(resp, 429)
            assert body["ERROR_TYPE"] == "queue_full"
            assert body["MAX_QUEUE_BYTES"] == LIMIT
            assert resp.headers["Retry-After"] == "1"
            break
        accepted += 1
    else:
        raise AssertionError("MAX_QUEUE_BYTES never refused a job")
    assert 1 <= accepted <= LIMIT // len(PAD)
    # Other endpoints' queues are not affected.
    assert gw.post("/jobs", {"SIGNATURE": "echo", "PAD": PAD}).status_code == 202
