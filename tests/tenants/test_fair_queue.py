"""FAIR_QUEUEING (gateway/fair_queue.py): on a busy endpoint, two front processes hand
each freed slot to the next request by class, then by tenant weight; a request whose
deadline passes while it waits, or whose caller leaves, gives its place up."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import Gateway, assert_error, assert_ok, wait_until

CONFIG = {
    "GATEWAY_WORKERS": 2, "FAIR_QUEUEING": True,
    "TENANTS": {"gold": {"WEIGHT": 3}, "bulk": {"PRIORITY": "batch"},
                "vip": {"PRIORITY": "interactive"}},
    "CONFIG_ENDPOINTS": {"slow": {"NR_WORKERS": 1, "TIMEOUT": 60}},
}


@pytest.fixture(scope="module")
def gw(module_gateways) -> Gateway:
    made = module_gateways(CONFIG)
    made.wait_state("slow", "READY", timeout=60)
    return made


def run(gw: Gateway, tenant: str, seconds: float = 0.01, session: requests.Session | None = None,
        headers: dict[str, str] | None = None, **fields) -> requests.Response:
    return (session or requests).post(
        gw.url("/run"), json={"SIGNATURE": "slow", "SECONDS": seconds, **fields},
        headers={"X-Customer-ID": tenant, **(headers or {})}, timeout=60)


def in_flight(gw: Gateway) -> float:
    """Requests the front holds for ``slow`` (running or waiting), every process's."""
    for line in gw.get("/metrics").text.splitlines():
        if line.startswith("bis_in_flight{") and 'endpoint="slow"' in line:
            return float(line.split()[-1])
    return 0.0


def hold_worker(gw: Gateway, marker: Path) -> threading.Thread:
    """A request that keeps slow's one worker busy until ``marker``'s twin appears."""
    release = marker.with_suffix(".go")
    thread = threading.Thread(target=lambda: assert_ok(run(
        gw, "holder", 0.0, MARKER=str(marker), MEET=str(release), MEET_S=30)))
    thread.start()
    wait_until(marker.exists, timeout=30, message="the holding request runs")
    return thread


def test_a_higher_class_waiting_later_starts_first(gw, tmp_path: Path):
    marker = tmp_path / "busy"
    holder = hold_worker(gw, marker)
    answers: dict[str, dict] = {}

    def send(label: str, tenant: str, headers: dict[str, str] | None = None) -> None:
        answers[label] = assert_ok(run(gw, tenant, headers=headers))

    threads = []
    try:
        for i in range(3):
            threads.append(threading.Thread(target=send, args=(f"bulk{i}", "bulk")))
            threads[-1].start()
        wait_until(lambda: in_flight(gw) >= 4, timeout=20, message="the batch requests wait")
        threads.append(threading.Thread(target=send, args=("lowered", "plain",
                                                         {"X-Priority": "batch"})))
        threads[-1].start()
        wait_until(lambda: in_flight(gw) >= 5, timeout=20, message="the lowered one waits")
        threads.append(threading.Thread(target=send, args=("standard", "plain")))
        threads[-1].start()
        wait_until(lambda: in_flight(gw) >= 6, timeout=20, message="the standard one waits")
    finally:
        marker.with_suffix(".go").write_text("go")
        holder.join(60)
        for thread in threads:
            thread.join(60)
    order = sorted(answers, key=lambda label: answers[label]["started"])
    assert order[0] == "standard", order  # came last, served first: its class is higher
    assert set(order[1:]) == {"bulk0", "bulk1", "bulk2", "lowered"}, order


def test_x_priority_never_raises_a_class(gw, tmp_path: Path):
    marker = tmp_path / "busy"
    holder = hold_worker(gw, marker)
    answers: dict[str, dict] = {}

    def send(label: str, tenant: str, headers: dict[str, str] | None = None) -> None:
        answers[label] = assert_ok(run(gw, tenant, headers=headers))

    first = threading.Thread(target=send, args=("raised", "bulk", {"X-Priority": "interactive"}))
    second = threading.Thread(target=send, args=("standard", "plain"))
    try:
        first.start()
        wait_until(lambda: in_flight(gw) >= 2, timeout=20, message="the first one waits")
        second.start()
        wait_until(lambda: in_flight(gw) >= 3, timeout=20, message="the second one waits")
    finally:
        marker.with_suffix(".go").write_text("go")
        for thread in (holder, first, second):
            thread.join(60)
    assert answers["standard"]["started"] < answers["raised"]["started"], answers


def test_an_unknown_class_is_a_400(gw):
    body = assert_error(run(gw, "plain", headers={"X-Priority": "urgent"}), 400)
    assert "X-Priority" in body["ERROR"] and body["PRIORITY_CLASSES"] == [
        "interactive", "standard", "batch"], body


def served(gw: Gateway, tenants: dict[str, int], total: int) -> Counter[str]:
    """Keep ``tenants[t]`` requests of each tenant in flight until ``total`` are
    answered; how many each got of the first ``total`` answers."""
    done: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def loop(tenant: str) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                assert_ok(run(gw, tenant, 0.01, session))
                with lock:
                    if sum(done.values()) < total:
                        done[tenant] += 1
                    if sum(done.values()) >= total:
                        stop.set()

    with ThreadPoolExecutor(sum(tenants.values())) as pool:
        futures = [pool.submit(loop, t) for t, n in tenants.items() for _ in range(n)]
        for future in futures:
            future.result(timeout=300)
    return done


def test_weights_share_a_busy_endpoint(gw):
    done = served(gw, {"gold": 4, "plain": 4}, 200)
    ratio = done["gold"] / done["plain"]
    assert 2.4 <= ratio <= 3.75, done  # weights 3:1


def test_equal_weights_share_equally_whatever_the_concurrency(gw):
    done = served(gw, {"many": 12, "few": 2}, 200)
    assert 0.8 <= done["many"] / done["few"] <= 1.25, done


def test_shares_are_listed(gw):
    served(gw, {"gold": 2, "plain": 2}, 40)
    shares = gw.get("/list_servers").json()["FAIR_SHARES"]["slow"]
    assert shares["gold"]["STARTED"] > 0 and shares["plain"]["STARTED"] > 0, shares
    assert 0 < shares["gold"]["SHARE"] < 1, shares
    text = gw.get("/metrics").text
    waited = [line for line in text.splitlines()
              if line.startswith("bis_tenant_queued_total{") and 'tenant="gold"' in line]
    assert waited and float(waited[0].split()[-1]) > 0, waited
    assert 'bis_queue_seconds_count{class="standard",endpoint="slow"}' in text


def test_a_deadline_passed_while_queued_never_starts(gw, tmp_path: Path):
    marker = tmp_path / "busy"
    holder = hold_worker(gw, marker)
    late_marker = tmp_path / "late"
    try:
        late = run(gw, "plain", MARKER=str(late_marker), headers={"X-Request-Deadline": "300"})
    finally:
        marker.with_suffix(".go").write_text("go")
        holder.join(60)
    assert assert_error(late, 504)["ERROR_TYPE"] == "deadline_exceeded"
    assert_ok(run(gw, "plain"))
    assert not late_marker.exists(), "the late request's _predict started"
    wait_until(lambda: in_flight(gw) == 0, timeout=20, message="nothing left held")


def test_a_caller_leaving_the_queue_gives_its_place_up(gw, tmp_path: Path):
    marker = tmp_path / "busy"
    holder = hold_worker(gw, marker)
    gone_marker = tmp_path / "gone"
    body = (b'{"SIGNATURE": "slow", "SECONDS": 0.01, "MARKER": "%s"}'
            % str(gone_marker).encode())
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"X-Customer-ID: leaver\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            wait_until(lambda: in_flight(gw) >= 2, timeout=20, message="it waits")
        wait_until(lambda: in_flight(gw) <= 1, timeout=20, message="its place is given up")
    finally:
        marker.with_suffix(".go").write_text("go")
        holder.join(60)
    assert_ok(run(gw, "plain"))
    assert not gone_marker.exists(), "the request of a caller gone started"
    wait_until(lambda: in_flight(gw) == 0, timeout=20, message="nothing left held")


def test_jobs_of_a_higher_class_leave_the_queue_first(gw, tmp_path: Path):
    from tests.jobs.jobs_client import wait_finished

    def submit(tenant: str, **fields) -> str:
        resp = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow", "SECONDS": 0.01,
                                                    **fields},
                             headers={"X-Customer-ID": tenant}, timeout=30)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["JOB_ID"])

    marker = tmp_path / "busy"
    holder = submit("holder", SECONDS=0, MARKER=str(marker), MEET=str(marker.with_suffix(".go")))
    wait_until(marker.exists, timeout=30, message="the holding job runs")
    try:
        jobs = {"bulk": submit("bulk"), "standard": submit("plain"), "vip": submit("vip")}
    finally:
        marker.with_suffix(".go").write_text("go")
    wait_finished(gw, holder, timeout=60)
    started = {label: wait_finished(gw, job_id, timeout=60)["RESULT"]["started"]
               for label, job_id in jobs.items()}
    assert sorted(started, key=started.__getitem__) == ["vip", "standard", "bulk"], started


def test_a_keys_own_class_wins_over_its_tenants(gateways, tmp_path: Path):
    from tests.tenants.conftest import make_key

    keyed = gateways({**CONFIG, "API_KEYS": True, "TENANTS": {"acme": {"PRIORITY": "batch"}}})
    keyed.wait_state("slow", "READY", timeout=60)
    plain = make_key(keyed)["KEY"]  # its tenant's class: batch
    vip = make_key(keyed, PRIORITY="interactive", WEIGHT=2)
    assert (vip["PRIORITY"], vip["WEIGHT"]) == ("interactive", 2.0), vip
    answers: dict[str, dict] = {}

    def send(label: str, key: str, **fields) -> None:
        answers[label] = assert_ok(requests.post(
            keyed.url("/run"), json={"SIGNATURE": "slow", "SECONDS": 0.01, **fields},
            headers={"Authorization": f"Bearer {key}"}, timeout=60))

    marker = tmp_path / "busy"
    threads = [threading.Thread(target=send, args=("holder", plain), kwargs={
        "SECONDS": 0, "MARKER": str(marker), "MEET": str(marker.with_suffix(".go"))})]
    threads[0].start()
    try:
        wait_until(marker.exists, timeout=30, message="the holding request runs")
        for label, key, count in (("tenant", plain, 2), ("key", vip["KEY"], 3)):
            threads.append(threading.Thread(target=send, args=(label, key)))
            threads[-1].start()
            wait_until(lambda n=count: in_flight(keyed) >= n, timeout=20,
                       message=f"the {label}'s request waits")
    finally:
        marker.with_suffix(".go").write_text("go")
        for thread in threads:
            thread.join(60)
    assert answers["key"]["started"] < answers["tenant"]["started"], answers
