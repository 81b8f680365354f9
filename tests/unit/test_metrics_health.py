"""/metrics gauges from a health sample, GPUs from recorded NVML data."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from basic_inference_server.gateway.metrics import render
from basic_inference_server.health.gpu import RecordedNvml, sample_gpus
from tests.conftest import FIXTURES

GIB = 1024 ** 3


def scrape(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_memory_disk_gpu_and_alert_gauges():
    gpu = sample_gpus(RecordedNvml.from_file(FIXTURES / "nvml" / "two_gpus.json"), {})
    system = {"mem_avail_gb": 3.0, "mem_total_gb": 24.0, "disk_free_gb": 50.0,
              "disk_total_gb": 250.0, "cpu_pct": 12.5}
    health = {"status": {"system": system, "gpu": gpu},
              "trees": {"<gateway>": 123_000_000, "echo": 45_000_000},
              "alerts": [{"name": "mem_low", "level": "critical"}]}
    got = scrape(render({}, health))
    assert got[("bis_memory_rss_bytes", (("tree", "echo"),))] == 45_000_000
    assert got[("bis_system_memory_available_bytes", ())] == 3.0 * GIB
    assert got[("bis_disk_free_bytes", ())] == 50.0 * GIB
    assert got[("bis_cpu_percent", ())] == 12.5
    first = gpu["gpus"][0]
    labels = (("gpu", "0"), ("name", first["name"]))
    assert got[("bis_gpu_memory_used_bytes", labels)] == first["mem_used_gb"] * GIB
    assert got[("bis_gpu_utilization_percent", labels)] == first["util_pct"]
    assert got[("bis_gpu_temperature_celsius", labels)] == first["temp_c"]
    assert len([k for k in got if k[0] == "bis_gpu_memory_total_bytes"]) == 2
    assert got[("bis_alert_active", (("alert", "mem_low"), ("level", "critical")))] == 1


def test_no_sample_yet_means_no_health_gauges():
    got = scrape(render({}, None))
    assert not [k for k in got if k[0].startswith(("bis_memory", "bis_gpu", "bis_system"))]
