"""The job runner without a gateway: a real SQLite queue and a small HTTP server as the
front; which endpoints it serves; how their jobs' queues are bounded."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from basic_inference_server.config import expand_versions, parse_config
from basic_inference_server.contracts import JobRunnerSpec
from basic_inference_server.gateway.jobs import job_route
from basic_inference_server.jobrunner.runner import JobRunner
from basic_inference_server.manager.specs import front_url, job_targets
from basic_inference_server.manager.state import Endpoint, State
from basic_inference_server.queues import Job, JobsSpec, open_queue, open_results
from basic_inference_server.queues.base import CANCELLED, DEAD, DONE, FAILED
from tests.conftest import free_port, wait_until

TARGET = {"MAX_ATTEMPTS": 2, "RETRY_BACKOFF": 0, "VISIBILITY_TIMEOUT": 30, "TIMEOUT": 5}
CREDENTIAL = "internal-credential-for-tests"


class Front(ThreadingHTTPServer):
    """Answers POST /run with ``self.answer(body)``; records what it received."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answer: Any = lambda body: (200, {"ran": body})
        self.lock = threading.Lock()
        # A body with HOLD is never answered: it waits for its caller to leave.
        self.holding = threading.Event()
        self.left = threading.Event()


class Handler(BaseHTTPRequestHandler):
    server: Front

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if body.get("HOLD"):
            self.connection.settimeout(30)
            self.server.holding.set()
            if self.rfile.read(1) == b"":  # the caller closed its connection
                self.server.left.set()
            return
        status, answer = self.server.answer(body)
        raw, kind = (answer, "image/png") if isinstance(answer, bytes) else \
            (json.dumps(answer).encode(), "application/json")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        if kind == "image/png":
            self.send_header("Content-Disposition", 'attachment; filename="x.png"')
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def serve(port: int = 0) -> Front:
    server = Front(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def front() -> Iterator[Front]:
    server = serve()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def jobs(tmp_path: Path) -> JobsSpec:
    url = f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    return JobsSpec(queue=url, results=url, ttl=60)


class Runner:
    """A JobRunner whose manager is a dict the test edits."""

    def __init__(self, url: str, jobs: JobsSpec) -> None:
        self.targets: dict[str, dict[str, Any]] = {"pipe": TARGET}
        spec = JobRunnerSpec(control="/nonexistent", front_url=url, credential=CREDENTIAL,
                             jobs=jobs.to_dict(), threads=2, stop_timeout=5)
        self.runner = JobRunner(spec, targets=lambda: dict(self.targets))
        self.queue, self.results = open_queue(jobs.queue), open_results(jobs.results)

    def submit(self, tenant: str | None = None, **body: Any) -> str:
        job = Job(endpoint="pipe", body={"SIGNATURE": "pipe", **body})
        self.results.create(job)
        if tenant:
            self.results.update(job.id, {"TENANT": tenant})
        assert self.queue.enqueue(job)
        return job.id

    def finished(self, job_id: str, status: str) -> dict[str, Any]:
        return wait_until(lambda: (r := self.results.get(job_id)) and r["STATUS"] == status
                          and r, timeout=15, message=f"job {job_id} {status}")


@pytest.fixture
def runner(front: Front, jobs: JobsSpec) -> Iterator[Runner]:
    made = Runner(f"http://127.0.0.1:{front.server_address[1]}", jobs)
    yield made
    made.runner.stop(5)
    made.queue.close()
    made.results.close()


def test_jobs_run_through_the_front_with_the_credential_and_tenant(runner: Runner,
                                                                    front: Front) -> None:
    runner.runner.refresh()
    job_id = runner.submit(tenant="acme", TEXT="hi")
    record = runner.finished(job_id, DONE)
    assert record["RESULT"] == {"ran": {"SIGNATURE": "pipe", "TEXT": "hi"}}
    assert record["HTTP_STATUS"] == 200 and record["ATTEMPTS"] == 1
    headers, body = front.seen[0]
    assert headers["authorization"] == f"Bearer {CREDENTIAL}"
    assert headers["x-customer-id"] == "acme"
    assert headers["x-request-id"] == f"job-{job_id}"
    untenanted = runner.submit(TEXT="x")
    runner.finished(untenanted, DONE)
    assert "x-customer-id" not in front.seen[1][0]


def test_a_job_cancelled_while_it_runs_closes_its_call_to_the_front(
        runner: Runner, front: Front) -> None:
    runner.runner.refresh()
    job_id = runner.submit(HOLD=True)
    assert front.holding.wait(15), "the job's call reached the front"
    runner.results.update(job_id, {"CANCEL_REQUESTED": 1.0})
    assert front.left.wait(15), "the job runner closed its connection"
    record = runner.finished(job_id, CANCELLED)
    assert "RESULT" not in record
    assert [name for _seq, name, _data in runner.results.events(job_id, 0, 100)][-1:] == \
        [CANCELLED]
    # The thread goes on with the next job, on a new connection.
    runner.finished(runner.submit(TEXT="next"), DONE)


def test_statuses_decide_failed_retried_or_dead(runner: Runner, front: Front) -> None:
    answers = {"bad": (400, {"ERROR": "no", "ERROR_TYPE": "bad_request"}),
               "later": (429, {"ERROR": "busy", "ERROR_TYPE": "step_failed"}),
               "broken": (502, {"ERROR": "step 'b' failed", "ERROR_TYPE": "step_failed"})}
    front.answer = lambda body: answers[body["KIND"]]
    runner.runner.refresh()
    bad = runner.submit(KIND="bad")
    later = runner.submit(KIND="later")
    broken = runner.submit(KIND="broken")
    assert runner.finished(bad, FAILED)["HTTP_STATUS"] == 400
    for job_id in (later, broken):  # retried, then dead after MAX_ATTEMPTS (2)
        record = runner.finished(job_id, DEAD)
        assert record["ATTEMPTS"] == 2 and record["RESULT"]["ERROR_TYPE"] == "step_failed"
    assert [b["KIND"] for _h, b in front.seen].count("later") == 2
    assert {j.id for j in runner.queue.dead_letters("pipe")} == {later, broken}


def test_a_file_answer_is_stored_base64(runner: Runner, front: Front) -> None:
    front.answer = lambda body: (200, b"\x89PNG")
    runner.runner.refresh()
    record = runner.finished(runner.submit(), DONE)
    assert record["RESULT"] == {"FILE": {"filename": "x.png", "mimetype": "image/png",
                                         "base64": "iVBORw=="}}


def test_an_unreachable_front_gives_the_job_back_uncounted(
        jobs: JobsSpec, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    made = Runner(f"http://127.0.0.1:{port}", jobs)
    try:
        made.runner.refresh()
        job_id = made.submit()
        # Claimed, not sent, given back: more times than MAX_ATTEMPTS, never dead.
        wait_until(lambda: caplog.text.count("given back") > TARGET["MAX_ATTEMPTS"], timeout=15)
        assert not made.queue.dead_letters("pipe")
        late = serve(port)
        try:
            record = made.finished(job_id, DONE)
        finally:
            late.shutdown()
            late.server_close()
        assert record["ATTEMPTS"] == 1
    finally:
        made.runner.stop(5)


def test_endpoints_come_and_go_with_the_managers_answer(runner: Runner, front: Front) -> None:
    runner.runner.refresh()
    workers = runner.runner.endpoints["pipe"]
    assert len(workers) == 2 and all(w.thread.is_alive() for w in workers)
    runner.targets = {"pipe": {**TARGET, "TIMEOUT": 9}}
    runner.runner.refresh()
    assert runner.runner.endpoints["pipe"] is workers and workers[0].timeout == 9
    runner.targets = {}
    runner.runner.refresh()
    assert "pipe" not in runner.runner.endpoints
    wait_until(lambda: not any(w.thread.is_alive() for w in workers), timeout=10)
    job_id = runner.submit()
    runner.targets = {"pipe": TARGET}
    runner.runner.refresh()
    runner.finished(job_id, DONE)


def test_the_front_url_is_the_gateways_own_address() -> None:
    assert front_url("0.0.0.0", 5002, False) == "http://127.0.0.1:5002"
    assert front_url("::", 5002, True) == "https://[::1]:5002"
    assert front_url("10.1.2.3", 80, False) == "http://10.1.2.3:80"


def test_which_endpoints_the_job_runner_serves() -> None:
    config = parse_config({"CONFIG_ENDPOINTS": {
        "plain": {}, "rem": {"URLS": ["http://127.0.0.1:1"], "MAX_ATTEMPTS": 7},
        "pipe": {"PIPELINE": {"STEPS": [{"ID": "a", "SIGNATURE": "plain"}]}},
        "clf": {"SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {}}, "TIMEOUT": 9}}})
    endpoints = {name: Endpoint(config=cfg, target_workers=1)
                 for section in config.endpoints.values()
                 for name, cfg in expand_versions(section).items()}
    sections = {n: c for n, c in config.endpoints.items() if c.settings["VERSIONS"]}
    assert job_targets(endpoints, sections) == {}  # nothing READY yet
    for name in ("plain", "rem", "pipe", "clf@v2"):
        endpoints[name].state = State.READY
    targets = job_targets(endpoints, sections)
    assert sorted(targets) == ["clf", "pipe", "rem"]  # never "plain" nor "clf@v2": servers
    assert targets["rem"]["MAX_ATTEMPTS"] == 7 and targets["clf"]["TIMEOUT"] == 9


def test_a_versioned_endpoints_queue_is_bounded_by_its_tightest_version() -> None:
    table = {"endpoints": {"clf@v1": {"max_queue_depth": 10, "max_queue_bytes": 500},
                           "clf@v2": {"max_queue_depth": 4, "max_queue_bytes": None},
                           "pipe": {"max_queue_depth": 1}},
             "traffic": {"clf": {"versions": {"v1": "clf@v1", "v2": "clf@v2"}}}}
    assert job_route(table, "clf") == {"max_queue_depth": 4, "max_queue_bytes": 500}
    assert job_route(table, "pipe") == {"max_queue_depth": 1}
    assert job_route(table, "nope") is None
