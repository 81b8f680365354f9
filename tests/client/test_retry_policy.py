"""Retry decisions: only what never ran is resent, within the budget, after Retry-After."""

from __future__ import annotations

import pytest

from basic_inference_server.client import errors
from basic_inference_server.client.flows import Answer, Call, Sleep, retry_after, send
from basic_inference_server.client.retry import PollPolicy, RetryPolicy

POLICY = RetryPolicy(attempts=4, budget=10, backoff=0.5, max_delay=5)
NEVER_RAN = ["unavailable", "overloaded", "too_many_connections", "queue_full",
             "models_unavailable", "rate_limited", "circuit_open"]


def error(kind: str, retry_after: float | None = 1.0) -> errors.BisError:
    return errors.error_for(503, {"ERROR": "x", "ERROR_TYPE": kind}, retry_after)


@pytest.mark.parametrize("kind", NEVER_RAN)
def test_requests_that_never_ran_are_retried_after_retry_after(kind):
    assert POLICY.delay(error(kind, 2.0), attempt=1, elapsed=0) == 2.0


@pytest.mark.parametrize("kind", ["timeout", "internal_error", "bad_request", "not_found",
                                  "unauthorized", "quota_exceeded", "payload_too_large"])
def test_other_errors_are_never_retried(kind):
    assert POLICY.delay(error(kind), 1, 0, idempotent=True) is None


def test_a_dropped_request_is_resent_only_when_idempotent():
    dropped = error("upstream_dropped")
    assert POLICY.delay(dropped, 1, 0) is None
    assert POLICY.delay(dropped, 1, 0, idempotent=True) == 1.0
    lost = errors.ConnectionLost("read failed")
    assert POLICY.delay(lost, 1, 0) is None
    assert POLICY.delay(lost, 1, 0, idempotent=True) is not None
    assert POLICY.delay(errors.ConnectFailed("refused"), 1, 0) is not None


def test_the_budget_bounds_attempts_and_time():
    assert POLICY.delay(error("unavailable"), attempt=4, elapsed=0) is None
    assert POLICY.delay(error("unavailable", 3.0), attempt=1, elapsed=8) is None
    assert POLICY.delay(error("unavailable", 60.0), attempt=1, elapsed=0) == 5  # max_delay
    backoff = POLICY.delay(error("unavailable", None), attempt=3, elapsed=0)
    assert backoff is not None and 1.0 <= backoff <= 2.0


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after({"retry-after": "3"}) == 3.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


def test_the_send_flow_retries_then_raises_with_its_attempts():
    flow = send(Call("POST", "/run"), RetryPolicy(attempts=2, budget=10), clock=lambda: 0.0)
    assert isinstance(next(flow), Call)
    busy = Answer(429, {"ERROR": "full", "ERROR_TYPE": "queue_full"}, {"retry-after": "1"})
    assert flow.send(busy) == Sleep(1.0)
    assert isinstance(flow.send(None), Call)
    with pytest.raises(errors.QueueFull) as caught:
        flow.send(busy)
    assert caught.value.attempts == 2 and caught.value.status == 429


def test_unknown_error_types_fall_back_on_the_status():
    assert isinstance(errors.error_for(504, "<html>", None), errors.Timeout)
    assert isinstance(errors.error_for(502, {}, None), errors.InternalError)
    assert isinstance(errors.error_for(409, {"ERROR": "busy"}, None), errors.Conflict)


def test_polling_backs_off_to_a_cap():
    delays = PollPolicy(first=0.1, factor=2, cap=0.5).delays()
    assert [next(delays) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
