"""System and process-tree sampling against the real machine (psutil)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from basic_inference_server.health import memory, sampler
from basic_inference_server.health.gpu import RecordedNvml
from basic_inference_server.health.sampler import (
    collect_sample,
    pid_owners,
    sample_system,
    sample_trees,
)
from tests.conftest import FIXTURES, wait_until

GB = 1024 ** 3


@pytest.fixture
def child_tree():
    """A python process with one python child, both holding a known buffer, killed after."""
    script = ("import subprocess, sys, time; buf = bytearray(32 * 1024 * 1024); "
              "c = subprocess.Popen([sys.executable, '-c', "
              "'import time; b = bytearray(32 * 1024 * 1024); time.sleep(60)']); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script])
    parent = psutil.Process(proc.pid)
    try:
        wait_until(lambda: parent.children(), timeout=60, message="the grandchild started")
        kids = parent.children()
        # both have touched their 32 MiB buffer
        wait_until(lambda: all(p.memory_info().rss > 32 * 1024 * 1024 for p in [parent, *kids]),
                   timeout=60, message="buffers resident")
        yield parent, kids
    finally:
        for p in [*parent.children(recursive=True), parent]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait(timeout=10)


def test_system_sample_matches_psutil(tmp_path):
    s = sample_system(tmp_path)
    vm = psutil.virtual_memory()
    assert s["mem_total_gb"] == round(vm.total / GB, 2)
    assert 0 < s["mem_avail_gb"] <= s["mem_total_gb"]
    assert 0 < s["mem_used_gb"] <= s["mem_total_gb"]
    assert 0 < s["mem_avail_pct"] <= 100
    assert s["swap_total_gb"] >= 0 and s["swap_used_gb"] >= 0
    assert s["swap_used_pct"] is None or 0 <= s["swap_used_pct"] <= 100
    disk = psutil.disk_usage(str(tmp_path))
    assert s["disk_path"] == str(tmp_path)
    assert s["disk_total_gb"] == round(disk.total / GB, 2)
    assert 0 <= s["disk_free_pct"] <= 100
    assert abs(s["disk_free_pct"] - (100 - disk.percent)) < 0.2  # like df
    assert 0.0 <= s["cpu_pct"] <= 100.0
    assert len(s["load_avg"]) == 3 and all(x >= 0 for x in s["load_avg"])
    assert s["cpu_count"] == psutil.cpu_count()
    assert "disk_error" not in s


def test_unreadable_disk_path_is_reported_not_raised(tmp_path):
    s = sample_system(tmp_path / "missing")
    assert s["disk_total_gb"] is None and s["disk_free_pct"] is None
    assert "FileNotFoundError" in s["disk_error"]
    assert s["mem_total_gb"] > 0, "the rest of the sample is still there"


def test_trees_count_the_whole_tree(child_tree):
    parent, kids = child_tree
    # RSS moves a little while the children settle (the loader pages in the rest of the
    # interpreter): the sample must lie between two direct reads taken around it
    before = memory.tree_rss([parent.pid])
    rss = sample_trees({"server": [parent.pid], "me": [os.getpid()], "gone": [2 ** 22 + 7]})
    after = memory.tree_rss([parent.pid])
    assert rss["server"] > 64 * 1024 * 1024, "parent and child buffers both counted"
    assert min(before, after) * 0.95 <= rss["server"] <= max(before, after) * 1.05
    assert rss["me"] > 0
    assert rss["gone"] == 0


def test_sample_trees_reuses_tree_rss(monkeypatch):
    assert sampler.tree_rss is memory.tree_rss, "one implementation, in memory.py"
    seen = []
    monkeypatch.setattr(sampler, "tree_rss", lambda pids: seen.append(list(pids)) or 1)
    assert sample_trees({"a": [1, 2], "b": [3]}) == {"a": 1, "b": 1}
    assert seen == [[1, 2], [3]]


def test_pid_owners_include_descendants(child_tree):
    parent, kids = child_tree
    owners = pid_owners({"sentiment": [parent.pid], "gone": [2 ** 22 + 7]})
    assert owners[parent.pid] == "sentiment"
    assert all(owners[k.pid] == "sentiment" for k in kids)
    assert owners[2 ** 22 + 7] == "gone"


def test_collect_sample_puts_it_together(child_tree):
    parent, kids = child_tree
    data = RecordedNvml.from_file(FIXTURES / "nvml" / "two_gpus.json").data
    # the endpoint's worker (the grandchild) is the GPU process
    data = {"devices": [{**data["devices"][0],
                         "compute_processes": [{"pid": kids[0].pid, "usedGpuMemory": GB}]}]}
    sample = collect_sample({"sentiment": [parent.pid]}, gpu_api=RecordedNvml(data))
    assert set(sample) == {"system", "trees", "gpu"}
    assert sample["system"]["mem_total_gb"] > 0
    assert sample["trees"]["sentiment"] > 64 * 1024 * 1024
    assert sample["gpu"]["gpus"][0]["processes"] == [
        {"pid": kids[0].pid, "mem_gb": 1.0, "endpoint": "sentiment"}]
