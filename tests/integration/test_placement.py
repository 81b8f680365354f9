"""Device placement through gunicorn's post_fork: worker i gets GPU GPUS[i mod n].

The GPU indices need no real GPU: the probe endpoint only reads its environment.
"""

from __future__ import annotations

import os

from tests.conftest import assert_ok, wait_until


def test_workers_are_spread_over_the_named_gpus(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {
        "spread": {"SERVER_CLASS": "device_probe", "NR_WORKERS": 3, "GPUS": [4, 6]},
        "cpu": {"SERVER_CLASS": "device_probe", "GPUS": []},
        "default": {"SERVER_CLASS": "device_probe"}}})
    seen: dict[int, str] = {}

    def every_worker_answered() -> bool:
        body = assert_ok(gw.run("spread"))
        seen[body["slot"]] = body["visible"]
        return len(seen) == 3

    wait_until(every_worker_answered, timeout=20, message="every worker answered")
    assert seen == {0: "4", 1: "6", 2: "4"}
    cpu = assert_ok(gw.run("cpu"))
    assert cpu["visible"] == "" and cpu["probe"] == "cpu"
    assert assert_ok(gw.run("default"))["visible"] == os.environ.get("CUDA_VISIBLE_DEVICES")
