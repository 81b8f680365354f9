"""/metrics: Prometheus text merged over the front's processes, parsed by prometheus_client."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import assert_error, assert_ok, wait_until

CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}}


def samples(gw):
    resp = gw.get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_and_report_workers(gateways):
    gw = gateways(CONFIG)
    # READY comes with the first worker; the gauge below counts both.
    wait_until(lambda: gw.server("echo")["workers_ready"] == 2, message="both echo workers ready")
    for i in range(20):
        assert_ok(gw.run("echo", I=i))
    assert_error(gw.run("nope"), 404)
    assert_error(gw.post("/run", data=b"[1]"), 400)
    got = samples(gw)
    ok = got[("bis_requests_total", (("endpoint", "echo"), ("status", "200"), ("version", "")))]
    assert ok == 20  # summed over both front processes
    assert got[("bis_requests_total", (("endpoint", "unknown"), ("status", "404"), ("version", "")))] == 1
    assert got[("bis_requests_total", (("endpoint", "-"), ("status", "400"), ("version", "")))] == 1
    assert got[("bis_request_seconds_count", (("endpoint", "echo"), ("version", "")))] == 20
    assert got[("bis_workers", (("endpoint", "echo"),))] == 2
    assert got[("bis_endpoint_ready", (("endpoint", "echo"),))] == 1
    states = {dict(labels)["state"]: value for (name, labels), value in got.items()
              if name == "bis_endpoint_state" and dict(labels)["endpoint"] == "echo"}
    assert states == {"STOPPED": 0, "STARTING": 0, "READY": 1, "RESTARTING": 0, "FAILED": 0,
                      "CRASHLOOP": 0, "STOPPING": 0, "UNREACHABLE": 0, "IDLE": 0}
    assert got[("bis_in_flight", (("endpoint", "echo"),))] == 0


def test_metrics_carry_the_supervisor_health_sample(gateways):
    gw = gateways(CONFIG)
    got = wait_until(lambda: (s := samples(gw)).get(("bis_memory_rss_bytes", (("tree", "echo"),)))
                     and s, timeout=10, message="a sample with the echo server in it")
    assert got[("bis_memory_rss_bytes", (("tree", "<gateway>"),))] > 10_000_000
    assert got[("bis_system_memory_total_bytes", ())] > 0
    assert not [k for k in got if k[0].startswith("bis_gpu")]  # no GPU on this box
