"""Pipelines through a real gateway: chained steps, a failing step named, parallel steps,
and pipeline jobs run by the job runner."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    FIXTURE_ENDPOINTS,
    ROOT,
    Gateway,
    GatewayPool,
    assert_error,
    assert_ok,
    wait_until,
)

# primes (the demo endpoint endpoints/cpu_bound.py) counts the primes under LIMIT; echo
# (a fixture) answers its input: the chain passes the count from one to the other.
CHAIN = {"STEPS": [{"ID": "count", "SIGNATURE": "primes", "INPUT": {"LIMIT": "$input.LIMIT"}},
                   {"ID": "say", "SIGNATURE": "echo",
                    "INPUT": {"PRIMES": "$steps.count.primes", "BELOW": "$steps.count.limit"}}],
         "OUTPUT": {"PRIMES": "$steps.say.echo.PRIMES", "BELOW": "$steps.say.echo.BELOW",
                    "TAG": "$steps.say.tag"}}
BROKEN = {"STEPS": [{"ID": "count", "SIGNATURE": "primes", "INPUT": {"LIMIT": "$input.LIMIT"}},
                    {"ID": "explode", "SIGNATURE": "bad", "INPUT": {"N": "$steps.count.primes"}}]}
# Two sleeps that need nothing from each other, each waiting for the other to start
# (slow's MEET), then a step that needs both.
FAN = {"STEPS": [{"ID": "left", "SIGNATURE": "slow", "INPUT": {
                     "SECONDS": "$input.SECONDS", "MARKER": "$input.LEFT", "MEET": "$input.RIGHT"}},
                 {"ID": "right", "SIGNATURE": "slow", "INPUT": {
                     "SECONDS": "$input.SECONDS", "MARKER": "$input.RIGHT", "MEET": "$input.LEFT"}},
                 {"ID": "join", "SIGNATURE": "echo",
                  "INPUT": {"L": "$steps.left", "R": "$steps.right"}}],
       "OUTPUT": {"LEFT": "$steps.join.echo.L", "RIGHT": "$steps.join.echo.R"}}
CONFIG = {"GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {
    "primes": {"SERVER_CLASS": "cpu_bound"},
    "echo": {},
    "bad": {"SERVER_CLASS": "bad_predict"},
    "slow": {"NR_WORKERS": 2},
    "clf": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {"TAG": "two"}},
            "TRAFFIC": {"v1": 0, "v2": 100}},
    "chain": {"PIPELINE": CHAIN},
    "broken": {"PIPELINE": BROKEN, "MAX_ATTEMPTS": 1},
    "fan": {"PIPELINE": FAN},
    "pinned": {"PIPELINE": {"STEPS": [{"ID": "one", "SIGNATURE": "clf@v1"}]}},
}}
PRIMES_BELOW_1000 = 168


def endpoints_folder(base: Path) -> Path:
    """The fixture endpoints, with the demo's cpu_bound beside them."""
    folder = base / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "endpoints" / "cpu_bound.py", folder / "cpu_bound.py")
    return folder


@pytest.fixture(scope="module")
def gw(module_gateways: GatewayPool, tmp_path_factory: pytest.TempPathFactory) -> Gateway:
    gateway = module_gateways(CONFIG, endpoints=endpoints_folder(tmp_path_factory.mktemp("ep")),
                              timeout=90)
    for name in ("primes", "echo", "bad", "slow", "clf@v1", "clf@v2", "chain", "fan"):
        gateway.wait_state(name, "READY", timeout=90)
    return gateway


def job_result(gw: Gateway, resp: requests.Response, status: str = "done") -> dict[str, Any]:
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["JOB_ID"]

    def finished() -> dict[str, Any] | None:
        record: dict[str, Any] = gw.get(f"/jobs/{job_id}").json()
        return record if record["STATUS"] in ("done", "failed", "dead") else None

    record = wait_until(finished, timeout=60, message=f"job {job_id} finished")
    assert record["STATUS"] == status, record
    return record


def test_a_two_step_pipeline_returns_the_chained_result(gw: Gateway) -> None:
    body = assert_ok(gw.run("chain", LIMIT=1000))
    assert body["PRIMES"] == PRIMES_BELOW_1000 and body["BELOW"] == 1000
    assert body["TAG"] == "from-_CONFIG"
    steps = body["PIPELINE"]["STEPS"]
    assert [(s["ID"], s["SIGNATURE"], s["STATUS"]) for s in steps] == [
        ("count", "primes", 200), ("say", "echo", 200)]
    # The second step starts once the first has answered.
    assert steps[1]["STARTED_MS"] >= steps[0]["STARTED_MS"] + steps[0]["ELAPSED_MS"]
    assert assert_ok(gw.run("chain", LIMIT=100))["PRIMES"] == 25
    assert gw.servers()["SERVERS"]["chain"]["kind"] == "pipeline"


def test_a_failure_in_step_2_names_step_2(gw: Gateway) -> None:
    body = assert_error(gw.run("broken", LIMIT=100), 502)
    assert body["ERROR_TYPE"] == "step_failed"
    assert body["STEP"]["ID"] == "explode" and body["STEP"]["SIGNATURE"] == "bad"
    assert body["STEP"]["STATUS"] == 500
    assert "'explode'" in body["ERROR"] and "model diverged in bad_predict" in body["ERROR"]
    assert [s["ID"] for s in body["STEPS"]] == ["count", "explode"]


def test_a_refused_input_keeps_its_status_and_names_its_step(gw: Gateway) -> None:
    body = assert_error(gw.run("chain", LIMIT="many"), 400)
    assert body["ERROR_TYPE"] == "step_failed" and body["STEP"]["ID"] == "count"
    assert "LIMIT must be an integer" in body["ERROR"]
    missing = assert_error(gw.run("chain"), 400)
    assert missing["STEP"] == {"ID": "count", "SIGNATURE": "primes"}
    assert "the request has no LIMIT" in missing["ERROR"]


def test_independent_steps_run_in_parallel(gw: Gateway, tmp_path: Path) -> None:
    """Each step waits for the other to start: they met (a serial run could not), and
    by their own clocks they overlap."""
    marks = {side: str(tmp_path / side) for side in ("LEFT", "RIGHT")}
    body = assert_ok(gw.run("fan", SECONDS=0.2, **marks, _timeout=90))
    left, right = body["LEFT"], body["RIGHT"]
    assert left["met"] is right["met"] is True
    assert left["slept"] == right["slept"] == 0.2
    assert left["started"] < right["finished"] and right["started"] < left["finished"]
    timings = {s["ID"]: s for s in body["PIPELINE"]["STEPS"]}
    assert timings["join"]["STARTED_MS"] >= max(
        timings[side]["STARTED_MS"] + timings[side]["ELAPSED_MS"] for side in ("left", "right"))


def test_steps_follow_the_traffic_policy_or_their_pin(gw: Gateway) -> None:
    body = assert_ok(gw.run("pinned", X=1))
    assert body["tag"] == "from-_CONFIG"  # clf@v1, although the policy sends clf to v2


def test_a_pipeline_job_is_run_by_the_job_runner(gw: Gateway) -> None:
    runner = gw.servers()["GATEWAY"]["jobrunner_pid"]
    assert runner
    record = job_result(gw, gw.run("chain", ASYNC=True, LIMIT=1000))
    assert record["RESULT"]["PRIMES"] == PRIMES_BELOW_1000
    assert [s["ID"] for s in record["RESULT"]["PIPELINE"]["STEPS"]] == ["count", "say"]
    assert record["HTTP_STATUS"] == 200 and record["WORKER"].endswith(f":{runner}")
    # The same through POST /jobs.
    resp = gw.post("/jobs", {"SIGNATURE": "chain", "LIMIT": 100})
    assert job_result(gw, resp)["RESULT"]["PRIMES"] == 25


def test_failing_pipeline_jobs_end_failed_or_dead_with_the_step_named(gw: Gateway) -> None:
    failed = job_result(gw, gw.run("chain", ASYNC=True, LIMIT="many"), "failed")
    assert failed["HTTP_STATUS"] == 400 and failed["RESULT"]["STEP"]["ID"] == "count"
    dead = job_result(gw, gw.run("broken", ASYNC=True, LIMIT=100), "dead")
    assert "'explode'" in dead["LAST_ERROR"] and dead["RESULT"]["STEP"]["SIGNATURE"] == "bad"
    letters = gw.get("/jobs/dead", params={"SIGNATURE": "broken"}).json()["DEAD_LETTERS"]
    assert dead["JOB_ID"] in [d["JOB_ID"] for d in letters]


def test_jobs_of_a_versioned_endpoint_follow_the_policy_when_they_run(gw: Gateway) -> None:
    record = job_result(gw, gw.run("clf", ASYNC=True, X=1))
    assert record["RESULT"]["tag"] == "two"  # v2 holds all the weight
    assert record["RESULT"]["ENDPOINT_VERSION"] == "v2"
    pinned = job_result(gw, gw.run("clf@v1", ASYNC=True, X=1))
    assert pinned["RESULT"]["tag"] == "from-_CONFIG"
    assert not pinned["WORKER"].endswith(f":{gw.servers()['GATEWAY']['jobrunner_pid']}")


def test_unknown_signatures_are_still_refused_as_jobs(gw: Gateway) -> None:
    assert_error(gw.run("nope", ASYNC=True), 404)


def test_with_api_keys_a_pipeline_job_runs_for_its_tenant(gateways: GatewayPool) -> None:
    """The job runner calls the front with its internal credential, for the job's tenant;
    the caller's key is checked against the pipeline only, not against its steps."""
    gw = gateways({"API_KEYS": True, "CONFIG_ENDPOINTS": {
        "echo": {}, "wrap": {"PIPELINE": {"STEPS": [{"ID": "only", "SIGNATURE": "echo"}]}}}})
    gw.wait_state("echo", "READY", timeout=60)
    made = gw.post("/keys", {"TENANT": "acme", "ENDPOINTS": ["wrap"]})
    assert made.status_code == 201, made.text
    key = {"Authorization": f"Bearer {made.json()['KEY']}"}
    run = gw.url("/run")
    assert requests.post(run, json={"SIGNATURE": "wrap", "X": 1}, headers=key,
                         timeout=10).json()["echo"] == {"X": 1}
    assert_error(requests.post(run, json={"SIGNATURE": "echo"}, headers=key, timeout=10), 403)
    resp = requests.post(run, json={"SIGNATURE": "wrap", "ASYNC": True, "X": 2}, headers=key,
                         timeout=10)
    assert resp.status_code == 202, resp.text
    job = gw.url(f"/jobs/{resp.json()['JOB_ID']}")
    record = wait_until(lambda: (r := requests.get(job, headers=key, timeout=10).json())
                        and r["STATUS"] in ("done", "failed", "dead") and r, timeout=60)
    assert record["STATUS"] == "done", record
    assert record["RESULT"]["echo"] == {"X": 2} and record["TENANT"] == "acme"
    # Nobody else gets through without a key: a made-up credential, or a tenant claimed.
    for headers, status in (({"Authorization": "Bearer not-the-internal-credential"}, 401),
                            ({"X-Customer-ID": "acme"}, 400)):
        assert_error(requests.post(run, json={"SIGNATURE": "wrap"}, headers=headers,
                                   timeout=10), status)
