"""Dynamic batching on a real endpoint server: grouping, per-request errors, default off."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import assert_error, assert_ok
from tests.integration.test_metrics import samples


def probe(**settings):
    return {"SERVER_CLASS": "batch_probe", "NR_WORKERS": 1, **settings}


def test_concurrent_requests_share_batches_and_keep_their_errors(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"b": probe(MAX_BATCH_SIZE=8, MAX_BATCH_DELAY_MS=20)}})

    def call(i):
        fields = {"I": i}
        if i == 5:
            fields["FAIL"] = True
        if i == 6:
            fields["BAD_INPUT"] = True
        return gw.run("b", **fields)

    with ThreadPoolExecutor(16) as ex:
        answers = list(ex.map(call, range(32)))
    bodies = {}
    for i, resp in enumerate(answers):
        if i == 5:
            assert "input 5 failed" in assert_error(resp, 500)["ERROR"]
        elif i == 6:
            assert assert_error(resp, 400)["ERROR_STAGE"] == "_pre_process"
        else:
            bodies[i] = assert_ok(resp)
            assert bodies[i]["i"] == i  # each answer is its own request's
    assert max(b["batch"] for b in bodies.values()) > 1
    assert max(b["batch"] for b in bodies.values()) <= 8
    assert len({b["thread"] for b in bodies.values()}) == 1  # one batch thread runs the model
    got = samples(gw)
    assert got[("bis_batch_size_sum", (("endpoint", "b"),))] == 31  # all but the 400
    assert got[("bis_batch_size_count", (("endpoint", "b"),))] < 31

    # A batch whose call raises: its inputs run again alone, only the culprit fails.
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda i: gw.run("b", I=i, EXPLODE=i == 3), range(8)))
    for i, resp in enumerate(answers):
        if i == 3:
            assert "whole batch failed" in assert_error(resp, 500)["ERROR"]
        else:
            assert assert_ok(resp)["i"] == i


def test_a_lone_request_does_not_wait_for_the_delay(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"b": probe(MAX_BATCH_SIZE=8, MAX_BATCH_DELAY_MS=5000)}})
    body = assert_ok(gw.run("b", I=1, _timeout=3))  # far less than the 5 s delay
    assert body["batch"] == 1


def test_batching_is_off_by_default(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"b": probe()}})
    with ThreadPoolExecutor(8) as ex:
        answers = list(ex.map(lambda i: gw.run("b", I=i), range(8)))
    assert {assert_ok(r)["batch"] for r in answers} == {1}

