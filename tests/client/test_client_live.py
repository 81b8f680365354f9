"""The client against a live gateway: answers, jobs, typed errors, retries on 429 and 503."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from basic_inference_server.client import (
    NO_RETRY,
    AsyncClient,
    Client,
    ConnectFailed,
    JobPending,
    NotFound,
    QueueFull,
    RetryPolicy,
    Timeout,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from tests.client.conftest import TOKEN, token_env
from tests.conftest import free_port, wait_until


def test_run_sync_and_async_give_the_same_answer(live, client):
    answer = client.run("echo", {"x": 1, "text": "héllo"})
    assert answer["echo"] == {"x": 1, "text": "héllo"}

    async def run_async():
        async with AsyncClient(live.base, admin_token=TOKEN) as bis:
            return await asyncio.gather(*(bis.run("echo", {"i": i}) for i in range(5)))

    answers = asyncio.run(run_async())
    assert [a["echo"] for a in answers] == [{"i": i} for i in range(5)]


def test_typed_errors(client):
    with pytest.raises(NotFound) as caught:
        client.run("no_such_endpoint")
    assert caught.value.status == 404 and "no_such_endpoint" in caught.value.message


def test_a_timeout_is_not_resent(client, tmp_path):
    marker = tmp_path / "slow.marker"
    with pytest.raises(Timeout) as caught:
        client.run("slow", {"SECONDS": 2, "MARKER": str(marker)},
                   retry=RetryPolicy(attempts=5, budget=30))
    raised = time.time()
    assert caught.value.status == 504 and caught.value.attempts == 1
    # Raised as the gateway's TIMEOUT (0.5 s) answered, before the call's 2 s were over.
    wait_until(marker.exists, timeout=10, message="the slow call started")
    assert raised < marker.stat().st_mtime + 2


def test_management_needs_the_admin_token(live, client):
    with Client(live.base, admin_token="wrong") as intruder, pytest.raises(Unauthorized):
        intruder.scale("echo", 2)
    assert "echo" in client.scale("echo", 1)["RESULT"]
    assert client.list_servers()["SERVERS"]["echo"]["nr_workers"] == 1
    assert client.ready() is True


def test_an_unreachable_gateway_is_retried_within_the_budget():
    policy = RetryPolicy(attempts=3, budget=5, backoff=0.05)
    with Client(f"http://127.0.0.1:{free_port()}", retry=policy) as bis, \
            pytest.raises(ConnectFailed) as caught:
        bis.run("echo")
    assert caught.value.attempts == 3


@pytest.mark.slow
def test_jobs_queue_full_429_then_retried_until_room(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"jobs_noop": {"DISABLED": True, "MAX_QUEUE_DEPTH": 1}}},
                  wait="settled", env=token_env())
    with Client(gw.base, admin_token=TOKEN) as bis:
        first = bis.submit("jobs_noop", {"I": 1})
        with pytest.raises(JobPending):
            bis.result(first)
        with pytest.raises(WaitTimeout):
            bis.wait(first, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(QueueFull) as caught:
            bis.submit("jobs_noop", {"I": 2}, retry=RetryPolicy(attempts=3, budget=20))
        # Three attempts, each after the server's Retry-After (1 s).
        assert caught.value.status == 429 and caught.value.attempts == 3
        assert caught.value.retry_after == 1
        assert time.monotonic() - started >= 2

        second: list[str] = []
        patient = threading.Thread(target=lambda: second.append(
            bis.submit("jobs_noop", {"I": 2}, retry=RetryPolicy(attempts=100, budget=60))))
        patient.start()
        bis.start_server("jobs_noop")
        patient.join(timeout=90)
        assert second, "the retried submission never got through"
        assert bis.wait(first, timeout=60)["I"] == 1
        assert bis.wait(second[0], timeout=60)["I"] == 2
        assert bis.status(second[0])["STATUS"] == "done"


@pytest.mark.slow
def test_a_loading_endpoint_503_with_retry_after_then_retried(gateways):
    gw = gateways({"NO_STARTUP_WAIT": True,
                   "CONFIG_ENDPOINTS": {"slow_load": {"LOAD_SECONDS": 4, "DISABLED": True}}},
                  wait="settled", env=token_env())
    with Client(gw.base, admin_token=TOKEN) as bis:
        bis.start_server("slow_load")
        with pytest.raises(Unavailable) as caught:
            bis.run("slow_load", retry=NO_RETRY)
        assert caught.value.status == 503 and caught.value.retry_after and caught.value.attempts == 1
        assert caught.value.body["ERROR_TYPE"] == "unavailable"
        answer = bis.run("slow_load", retry=RetryPolicy(attempts=60, budget=60))
        assert answer["status"] == "loaded"
