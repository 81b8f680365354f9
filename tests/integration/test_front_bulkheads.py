"""One stuck endpoint cannot hold the front: past MAX_IN_FLIGHT it answers 503 at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import assert_ok, wait_until
from tests.timing import assert_not_slowed, timed

STUCK = 120


def in_flight(gw, endpoint: str) -> float:
    """The front's ``bis_in_flight`` gauge of ``endpoint``."""
    for family in text_string_to_metric_families(gw.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "bis_in_flight" and sample.labels.get("endpoint") == endpoint:
                return sample.value
    return 0.0


def test_a_stuck_endpoint_does_not_starve_a_healthy_one(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"stuck": {"SERVER_CLASS": "slow", "NR_WORKERS": 1},
                                        "echo": {"NR_WORKERS": 1}}})
    limit = 32  # the default: 1 live worker x MAX_BATCH_SIZE 1 x 32
    answers: list[requests.Response | Exception] = []
    lock = threading.Lock()

    def stuck_call() -> None:
        # Admitted calls stay held (the work takes 60 s) until the gateway is torn down:
        # no client timeout ends them while the test counts what came back.
        try:
            resp = requests.post(gw.url("/run"), json={"SIGNATURE": "stuck", "SECONDS": 60},
                                 timeout=120)
        except requests.RequestException as exc:
            resp = exc  # type: ignore[assignment]
        with lock:
            answers.append(resp)

    with requests.Session() as session:
        def echo(i: int) -> float:
            resp, took = timed(lambda: session.post(gw.url("/run"),
                                                    json={"SIGNATURE": "echo", "I": i}, timeout=30))
            assert assert_ok(resp)["echo"] == {"I": i}
            return took

        baseline = [echo(i) for i in range(30)]
        pool = ThreadPoolExecutor(max_workers=STUCK)
        try:
            for _ in range(STUCK):
                pool.submit(stuck_call)
            # The bulkhead admits `limit` of them, and refuses every other one at once.
            wait_until(lambda: in_flight(gw, "stuck") == limit and len(answers) == STUCK - limit,
                       timeout=60, message="MAX_IN_FLIGHT held, every request past it answered")
            with lock:
                refused = list(answers)
            for resp in refused:
                assert isinstance(resp, requests.Response), resp
                assert resp.status_code == 503, resp.text
                assert resp.json()["ERROR_TYPE"] == "overloaded"
                assert resp.json()["MAX_IN_FLIGHT"] == limit
                assert resp.headers["Retry-After"] == "1"
            # Meanwhile, a healthy endpoint answers at c=1 as before the flood...
            during = [echo(i) for i in range(30)]
            # ...while the stuck calls still hold their places (none has been let go).
            assert in_flight(gw, "stuck") == limit and len(answers) == STUCK - limit
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    assert_not_slowed(during, baseline, f"echo beside {limit} stuck calls")


def test_max_in_flight_setting(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"one": {"SERVER_CLASS": "slow", "MAX_IN_FLIGHT": 2}}})
    with ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(requests.post, gw.url("/run"),
                            json={"SIGNATURE": "one", "SECONDS": 2}, timeout=10) for _ in range(2)]
        wait_until(lambda: in_flight(gw, "one") >= 2, timeout=30, message="two requests held")
        resp = requests.post(gw.url("/run"), json={"SIGNATURE": "one", "SECONDS": 0}, timeout=5)
        assert resp.status_code == 503 and resp.json()["ERROR_TYPE"] == "overloaded", resp.text
        for future in held:
            assert_ok(future.result())
    assert_ok(requests.post(gw.url("/run"), json={"SIGNATURE": "one", "SECONDS": 0}, timeout=5))
