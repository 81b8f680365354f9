"""TRACING (tracing.py): real gateways export OTLP/HTTP to a receiver this test starts
(decoded with opentelemetry-proto). A two-step pipeline call, and a job of it, each make
one trace in parent order; the caller's traceparent is honoured; a remote endpoint's
gateway goes on with the same trace; unsampled requests export nothing; with TRACING
off, no OpenTelemetry module is imported."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.conftest import Gateway, assert_ok, gateway_env, wait_until

# Two steps of 10 ms each: a stage that long makes a span of its own.
CHAIN = {"STEPS": [{"ID": "first", "SIGNATURE": "slow", "INPUT": {"SECONDS": "$input.S"}},
                   {"ID": "second", "SIGNATURE": "slow",
                    "INPUT": {"SECONDS": "$steps.first.slept"}}],
         "OUTPUT": {"SLEPT": "$steps.second.slept"}}
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP traces receiver: the spans it got, as dicts."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        self.spans: list[dict[str, str]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver.add(request)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: object) -> None:
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    with self.lock:
                        self.spans.append({
                            "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(), "name": span.name,
                            "role": attrs.get("bis.role", ""),
                            "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                            "attributes": {a.key: a.value.string_value or a.value.int_value
                                           for a in span.attributes}})

    def trace(self, trace_id: str) -> list[dict[str, str]]:
        with self.lock:
            return [s for s in self.spans if s["trace"] == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


@pytest.fixture(scope="module")
def gw(module_gateways, receiver) -> Gateway:
    made = module_gateways({
        "TRACING": {"OTLP_URL": receiver.url, "SAMPLE": 1.0}, "SERVER_TIMING": True,
        "CONFIG_ENDPOINTS": {
            "slow": {"NR_WORKERS": 1}, "chain": {"PIPELINE": CHAIN},
            "clf": {"SERVER_CLASS": "slow", "VERSIONS": {"v1": {}, "v2": {}},
                    "TRAFFIC": {"v1": 100, "v2": 0}, "SHADOW": {"VERSION": "v2", "FRACTION": 1}}}},
        env=gateway_env(OTEL_BSP_SCHEDULE_DELAY="100"))
    for name in ("slow", "chain", "clf@v1", "clf@v2"):
        made.wait_state(name, "READY", timeout=60)
    return made


def complete(spans: list[dict[str, str]], root: str, runs: int) -> list[dict[str, str]] | None:
    """``spans`` once they hold their root and ``runs`` endpoint runs (the front's and the
    servers' spans come in batches of their own)."""
    names = [s["name"] for s in spans]
    return spans if root in names and names.count("predict") >= runs else None


def by_name(spans: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for span in spans:
        out.setdefault(span["name"], []).append(span)
    return out


def parent_of(spans: list[dict[str, str]], span: dict[str, str]) -> dict[str, str]:
    return next(s for s in spans if s["id"] == span["parent"])


def test_a_pipeline_call_is_one_trace_under_the_callers(gw, receiver):
    resp = requests.post(gw.url("/run"), json={"SIGNATURE": "chain", "S": 0.01}, timeout=30,
                         headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert assert_ok(resp)["SLEPT"] == 0.01
    spans = wait_until(lambda: complete(receiver.trace(CALLER_TRACE), "run", 2), timeout=30,
                       message="the pipeline's spans reach the receiver")
    named = by_name(spans)
    assert len(spans) >= 8, sorted(named)
    (run,) = named["run"]
    assert run["parent"] == CALLER_SPAN and run["role"] == "front"
    steps = named["step slow"]
    assert len(steps) == 2 and all(s["parent"] == run["id"] for s in steps)
    assert len(named["upstream slow"]) == 2
    for upstream in named["upstream slow"]:
        assert parent_of(spans, upstream)["name"] == "step slow"
    assert len(named["endpoint slow"]) == 2
    for endpoint in named["endpoint slow"]:
        assert parent_of(spans, endpoint)["name"] == "upstream slow" and endpoint["role"] == "server"
        # Every stage, short ones too, in Server-Timing's format (SERVER_TIMING is on).
        assert "pre;dur=" in endpoint["attributes"]["bis.server_timing"], endpoint
    predicts = named["predict"]
    assert len(predicts) == 2 and all(
        parent_of(spans, s)["name"] == "endpoint slow" for s in predicts)
    assert all(s["end"] - s["start"] >= 10_000_000 for s in predicts)
    # Each child lies within its parent.
    for span in spans:
        if span["parent"] != CALLER_SPAN:
            parent = parent_of(spans, span)
            assert parent["start"] <= span["start"] and span["end"] <= parent["end"] + 1_000_000, (
                span["name"], parent["name"])
    # The access log names the trace.
    wait_until(lambda: f"trace {CALLER_TRACE}" in gw.log_text(), timeout=10,
               message="the access line names the trace")


def test_a_shadow_copy_is_a_span_of_the_request(gw, receiver):
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    resp = requests.post(gw.url("/run"), json={"SIGNATURE": "clf", "SECONDS": 0.01}, timeout=30,
                         headers={"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
    assert_ok(resp)
    spans = wait_until(lambda: complete(receiver.trace(trace_id), "shadow clf@v2", 2),
                       timeout=30, message="the request's and its copy's spans")
    named = by_name(spans)
    (shadow,) = named["shadow clf@v2"]
    assert parent_of(spans, shadow)["name"] == "run"
    assert shadow["attributes"]["bis.shadow"] in ("agree", "disagree"), shadow
    (copy,) = named["upstream clf@v2"]
    assert copy["parent"] == shadow["id"]


def test_a_job_of_the_pipeline_is_one_trace(gw, receiver):
    from tests.jobs.jobs_client import wait_finished

    resp = requests.post(gw.url("/jobs"), json={"SIGNATURE": "chain", "S": 0.01}, timeout=30)
    assert resp.status_code == 202, resp.text
    assert wait_finished(gw, resp.json()["JOB_ID"], timeout=60)["STATUS"] == "done"

    def job_trace() -> list[dict[str, str]] | None:
        for span in list(receiver.spans):
            if span["name"] == "jobs":
                got = complete(receiver.trace(span["trace"]), "run", 2)
                if got:
                    return got
        return None

    spans = wait_until(job_trace, timeout=30, message="the job's spans reach the receiver")
    named = by_name(spans)
    assert len(spans) >= 8, sorted(named)
    (submit,) = named["job submit"]
    assert parent_of(spans, submit)["name"] == "jobs"
    (run,) = named["run"]  # the job runner's call, in the submit's trace
    assert run["parent"] == submit["id"]
    assert all(parent_of(spans, s)["name"] == "run" for s in named["step slow"])


def test_a_job_of_an_endpoint_is_traced_by_its_server(gw, receiver):
    from tests.jobs.jobs_client import wait_finished

    resp = requests.post(gw.url("/jobs"), json={"SIGNATURE": "slow", "SECONDS": 0.01},
                         timeout=30)
    assert resp.status_code == 202, resp.text
    assert wait_finished(gw, resp.json()["JOB_ID"], timeout=60)["STATUS"] == "done"

    def job_trace() -> list[dict[str, str]] | None:
        for span in list(receiver.spans):
            if span["name"] == "job slow":
                got = receiver.trace(span["trace"])
                if {"jobs", "job queue", "predict"} <= {s["name"] for s in got}:
                    return got
        return None

    spans = wait_until(job_trace, timeout=30, message="the job's spans reach the receiver")
    named = by_name(spans)
    (job,) = named["job slow"]
    assert parent_of(spans, job)["name"] == "job submit" and job["role"] == "server"
    assert parent_of(spans, named["job queue"][0])["name"] == "job slow"
    assert parent_of(spans, named["predict"][0])["name"] == "job slow"


def test_a_remote_endpoint_goes_on_with_the_trace(gw, gateways, receiver):
    edge = gateways({"TRACING": {"OTLP_URL": receiver.url, "SAMPLE": 0},
                     "CONFIG_ENDPOINTS": {"far": {"URLS": [f"http://127.0.0.1:{gw.port}"],
                                                  "REMOTE_SIGNATURE": "slow"}}},
                    env=gateway_env(OTEL_BSP_SCHEDULE_DELAY="100"))
    edge.wait_state("far", "READY", timeout=60)
    unsampled = requests.post(edge.url("/run"), json={"SIGNATURE": "far", "SECONDS": 0.01},
                              timeout=30)
    assert_ok(unsampled)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    resp = requests.post(edge.url("/run"), json={"SIGNATURE": "far", "SECONDS": 0.01},
                         timeout=30,
                         headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert_ok(resp)
    spans = wait_until(lambda: (got := complete(receiver.trace(trace_id), "upstream far", 1))
                       and [s["name"] for s in got].count("run") == 2 and got, timeout=30,
                       message="both gateways' spans reach the receiver")
    runs = by_name(spans)["run"]
    assert len(runs) == 2, runs  # the edge's and the remote's
    remote_run = next(r for r in runs if r["parent"] != "b7ad6b7169203331")
    assert parent_of(spans, remote_run)["name"] == "upstream far"
    # SAMPLE 0: the request without a traceparent left no trace at the edge.
    edge_runs = [s for s in receiver.spans if s["name"] == "upstream far"]
    assert {s["trace"] for s in edge_runs} == {trace_id}, edge_runs


def test_tracing_off_imports_no_opentelemetry():
    code = ("import sys\n"
            "import basic_inference_server.gateway.app, basic_inference_server.server.app\n"
            "import basic_inference_server.jobrunner.runner, basic_inference_server.manager\n"
            "from basic_inference_server.gateway.app import Front\n"
            "from basic_inference_server.contracts import FrontSpec\n"
            "Front(FrontSpec(routes='/nonexistent/routes.json', control='/nonexistent'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
