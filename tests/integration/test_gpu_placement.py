"""GPU placement by memory (GPU_MEMORY_MB) on recorded NVML data of 2 GPUs.

The gateway's NVML_RECORDING is read by every process in place of the driver: the
manager places by it, the workers' memory guards read it. The test rewrites it as a
driver would report the memory the READY workers took.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import assert_error, assert_ok, wait_until

MIB = 1024 * 1024
NEED = 8000  # MiB per worker


def record(path: Path, free_mib: tuple[int, int]) -> None:
    """Two GPUs: a 24 GiB and an 80 GiB one, with this much free."""
    totals = (24576, 81920)
    path.write_text(json.dumps({"devices": [
        {"name": name, "memory": {"total": total * MIB, "used": (total - free) * MIB,
                                  "free": free * MIB}}
        for name, total, free in zip(("NVIDIA L4", "NVIDIA H100"), totals, free_mib, strict=True)]}))


def placed(gw: Any, name: str, count: int) -> Counter[str]:
    """The GPU each of ``name``'s ``count`` workers sees, counted (one answer per slot)."""
    seen: dict[int, dict[str, Any]] = {}

    def every_worker_answered() -> bool:
        for _ in range(4 * count):
            body = assert_ok(gw.run(name))
            seen[body["slot"]] = body
        return len(seen) == count

    wait_until(every_worker_answered, timeout=30, message=f"every worker of {name} answered")
    # The memory guard of each worker reads the GPU it was placed on.
    assert all(b["probe"] == f"cuda:{b['visible']}" for b in seen.values()), seen
    return Counter(b["visible"] for b in seen.values())


def test_workers_land_where_the_memory_is_and_one_that_fits_nowhere_is_refused(gateways, tmp_path):
    recording = tmp_path / "nvml.json"
    record(recording, (10240, 24576))
    gw = gateways({"NVML_RECORDING": str(recording), "CONFIG_ENDPOINTS": {
        "big": {"SERVER_CLASS": "device_probe", "NR_WORKERS": 3, "GPU_MEMORY_MB": NEED},
        "huge": {"SERVER_CLASS": "device_probe", "GPU_MEMORY_MB": 30000},
        "plain": {"SERVER_CLASS": "device_probe", "GPUS": [0, 1]}}}, wait="settled")

    # Most free first, counting the workers already placed: 24576 -> 16576 -> 8576 on
    # GPU 1, then GPU 0's 10240 is the most.
    assert placed(gw, "big", 3) == {"1": 2, "0": 1}
    assert gw.server("big")["gpu_placement"] == {"0": 1, "1": 2}
    # Without GPU_MEMORY_MB: round-robin over GPUS, as before.
    assert placed(gw, "plain", 1) == {"0": 1}

    # Configured, fits nowhere: FAILED, the figures in last_error.
    huge = gw.server("huge")
    assert huge["state"] == "FAILED", huge
    assert "1 of 1 workers needing GPU_MEMORY_MB 30000 MiB each fit on no GPU" in huge["last_error"]
    assert "GPU 1: 24576 MiB free of 81920" in huge["last_error"], huge

    # /start_server of one that fits nowhere: 429 with the figures, nothing started.
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "huge2", "SERVER_CLASS": "device_probe",
                                                  "GPU_MEMORY_MB": 50000}), 429)
    assert body["ERROR_TYPE"] == "models_unavailable" and body["GPU_MEMORY_MB"] == 50000
    assert [(g["index"], g["free_mb"], g["total_mb"]) for g in body["GPUS"]] == [
        (0, 10240, 24576), (1, 24576, 81920)]
    assert "huge2" not in gw.servers()["SERVERS"]

    # The driver now shows the READY workers' memory; one more goes where it fits.
    record(recording, (10240 - NEED, 24576 - 2 * NEED))
    assert_ok(gw.post("/update_workers", {"SIGNATURE": "big", "NR_WORKERS": 4}))
    wait_until(lambda: gw.server("big")["workers_ready"] == 4, timeout=30,
               message="big has 4 workers")
    assert placed(gw, "big", 4) == {"1": 3, "0": 1}

    # Full: a fifth worker, or a reload's second generation, fits nowhere.
    record(recording, (10240 - NEED, 24576 - 3 * NEED))
    for path, args in (("/update_workers", {"NR_WORKERS": 5}), ("/reload_server", {})):
        body = assert_error(gw.post(path, {"SIGNATURE": "big", **args}), 429)
        assert body["ERROR_TYPE"] == "models_unavailable", body
        assert [g["free_mb"] for g in body["GPUS"]] == [2240, 576], body
    big = gw.server("big")
    assert (big["state"], big["nr_workers"], big["workers_ready"]) == ("READY", 4, 4), big
    assert big["generation"] == 1 and big["reload_error"] is None, big

    # Down to 2: the workers leave the fullest GPU first, and the right ones stop.
    assert_ok(gw.post("/update_workers", {"SIGNATURE": "big", "NR_WORKERS": 2}))
    wait_until(lambda: gw.server("big")["workers_ready"] == 2, timeout=30,
               message="big is down to 2 workers")
    assert gw.server("big")["gpu_placement"] == {"1": 2}
    assert placed(gw, "big", 2) == {"1": 2}
