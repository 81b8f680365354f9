"""Memory of process trees and of the system, in the original's ``SYSTEM_STATUS`` shape."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import psutil

GB = 1024 ** 3


def tree_rss(pids: Iterable[int]) -> int:
    """Resident memory in bytes of the given processes and all their descendants."""
    seen: set[int] = set()
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            if proc.pid in seen:
                continue
            seen.add(proc.pid)
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
    return total


# Key of the gateway's own processes among the sampled trees: no endpoint name has '<'.
GATEWAY_TREE = "<gateway>"


def seed_status(sample: Mapping[str, Any]) -> dict[str, Any]:
    """``SYSTEM_STATUS`` as the original reported it (sizes in GB), plus disk.

    Built from one :func:`~.sampler.collect_sample` whose trees hold ``GATEWAY_TREE``
    and one entry per endpoint.
    """
    system, trees = sample["system"], sample["trees"]
    mem_gateway = trees.get(GATEWAY_TREE, 0) / GB
    mem_servers = {n: round(rss / GB, 3) for n, rss in trees.items() if n != GATEWAY_TREE}
    return {
        "info": "Memory Size is in GB. Total and avail mem may be reported inconsistently "
                "in containers.",
        "mem_avail": system["mem_avail_gb"],
        "mem_gateway": round(mem_gateway, 3),
        "mem_servers": mem_servers,
        "mem_sys": system["mem_used_gb"],
        "mem_total": system["mem_total_gb"],
        "mem_used": round(mem_gateway + sum(mem_servers.values()), 3),
        "disk_total": system["disk_total_gb"],
        "disk_avail": system["disk_free_gb"],
    }
