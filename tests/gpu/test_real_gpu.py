"""Placement by memory, the cap and the refusals against the real driver.

Collected only with BIS_GPU_TESTS=1 (``bench/gpu_check.sh`` sets it on a machine with
a GPU); everywhere else the same code paths are tested on NVML recordings
(tests/integration/test_gpu_placement.py).
"""

from __future__ import annotations

import torch

from tests.conftest import assert_ok

MIB = 1024 * 1024


def test_the_machine_has_a_cuda_device():
    assert torch.cuda.is_available() and torch.cuda.device_count() >= 1


def test_workers_are_placed_by_free_memory_and_capped(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"alloc": {
        "SERVER_CLASS": "cuda_alloc", "NR_WORKERS": 2, "GPU_MEMORY_MB": 1024,
        "GPU_MEMORY_CAP": True}}})
    info = gw.server("alloc")
    assert sum(info["gpu_placement"].values()) == 2, info
    body = assert_ok(gw.run("alloc", MB=256))
    assert body["allocated_mb"] == 256 and body["visible"] in info["gpu_placement"], body
    # Past its cap a request fails in its worker, which serves on.
    over = gw.run("alloc", MB=4096)
    assert over.status_code == 500, over.text
    assert_ok(gw.run("alloc", MB=256))
    assert gw.server("alloc")["restarts"] == 0


def test_a_worker_larger_than_every_gpu_is_refused(gateways):
    largest = max(torch.cuda.get_device_properties(i).total_memory
                  for i in range(torch.cuda.device_count())) // MIB
    gw = gateways({"CONFIG_ENDPOINTS": {
        "echo": {}, "huge": {"SERVER_CLASS": "cuda_alloc", "GPU_MEMORY_MB": largest + 1}}},
        wait="settled")
    huge = gw.server("huge")
    assert huge["state"] == "FAILED" and "fit on no GPU" in huge["last_error"], huge
    assert_ok(gw.run("echo"))
