"""``Server-Timing`` on /run answers (SERVER_TIMING): the gateway's stages and the endpoint
server's, each timed by its own clock; off by default."""

from __future__ import annotations

import shutil
from pathlib import Path

import requests

from tests.conftest import FIXTURE_ENDPOINTS, ROOT, GatewayPool, assert_ok

SERVER_STAGES = ("queue", "decode", "pre", "predict", "post", "encode")
CONFIG = {"SERVER_TIMING": True, "CONFIG_ENDPOINTS": {
    "cpu_bound": {"NR_WORKERS": 1},
    "batch_probe": {"NR_WORKERS": 1, "MAX_BATCH_SIZE": 4, "MAX_BATCH_DELAY_MS": 5},
}}


def stages(resp: requests.Response) -> dict[str, float]:
    """The header's entries (requests joins the two Server-Timing lines with ', ')."""
    out: dict[str, float] = {}
    for entry in resp.headers["Server-Timing"].split(","):
        name, _, dur = entry.strip().partition(";dur=")
        assert name not in out, resp.headers["Server-Timing"]
        out[name] = float(dur)
    return out


def endpoints(tmp_path: Path) -> Path:
    folder = tmp_path / "endpoints"
    folder.mkdir()
    shutil.copy(ROOT / "endpoints" / "cpu_bound.py", folder)
    shutil.copy(FIXTURE_ENDPOINTS / "batch_probe.py", folder)
    return folder


def test_the_stages_account_for_the_server_time_of_cpu_bound(gateways: GatewayPool,
                                                              tmp_path: Path) -> None:
    gw = gateways(CONFIG, endpoints=endpoints(tmp_path))
    gw.wait_state("cpu_bound", "READY", timeout=60)
    staged = server = 0.0
    for _ in range(15):
        resp = gw.run("cpu_bound", LIMIT=30000)
        assert_ok(resp)
        times = stages(resp)
        assert set(times) == {*SERVER_STAGES, "server", "gate", "upstream", "gateway"}, times
        # Each clock nests in the next: the server's whole in the upstream call, and
        # that in the gateway's.
        assert times["server"] <= times["upstream"] <= times["gateway"], times
        assert times["gate"] + times["upstream"] <= times["gateway"], times
        assert times["predict"] > times["pre"] + times["post"], times
        staged += sum(times[name] for name in SERVER_STAGES)
        server += times["server"]
    assert staged >= 0.95 * server, (staged, server)
    assert staged <= server


def test_a_batched_endpoint_reports_its_wait_for_the_batch(gateways: GatewayPool,
                                                           tmp_path: Path) -> None:
    gw = gateways(CONFIG, endpoints=endpoints(tmp_path))
    gw.wait_state("batch_probe", "READY", timeout=60)
    resp = gw.run("batch_probe", I=1)
    assert_ok(resp)
    times = stages(resp)
    assert "predict" not in times
    # _predict_batch sleeps 50 ms: the request waited at least that for its batch.
    assert times["batch"] >= 50, times
    assert times["server"] >= times["batch"] + times["pre"] + times["post"]


def test_an_error_answer_has_the_server_stages_until_it(gateways: GatewayPool,
                                                        tmp_path: Path) -> None:
    gw = gateways(CONFIG, endpoints=endpoints(tmp_path))
    gw.wait_state("cpu_bound", "READY", timeout=60)
    resp = gw.run("cpu_bound", LIMIT=1)  # refused by _pre_process
    assert resp.status_code == 400
    times = stages(resp)
    assert {"queue", "decode", "server"} <= set(times) and "predict" not in times, times


def test_off_by_default(gateways: GatewayPool, tmp_path: Path) -> None:
    gw = gateways({"CONFIG_ENDPOINTS": {"cpu_bound": {"NR_WORKERS": 1}}},
                  endpoints=endpoints(tmp_path))
    gw.wait_state("cpu_bound", "READY", timeout=60)
    resp = gw.run("cpu_bound", LIMIT=100)
    assert_ok(resp)
    assert "Server-Timing" not in resp.headers
