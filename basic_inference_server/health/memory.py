"""Memory of process trees and of the system, in the original's ``SYSTEM_STATUS`` shape."""

from __future__ import annotations

from collections.abc import Iterable

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


def system_status(gateway_pids: list[int], servers: dict[str, list[int]]) -> dict[str, object]:
    """``SYSTEM_STATUS`` as the original reported it (sizes in GB), plus disk."""
    vm = psutil.virtual_memory()
    mem_gateway = tree_rss(gateway_pids) / GB
    mem_servers = {name: round(tree_rss(pids) / GB, 3) for name, pids in servers.items()}
    disk = psutil.disk_usage("/")
    return {
        "info": "Memory Size is in GB. Total and avail mem may be reported inconsistently "
                "in containers.",
        "mem_avail": round(vm.available / GB, 2),
        "mem_gateway": round(mem_gateway, 3),
        "mem_servers": mem_servers,
        "mem_sys": round(vm.used / GB, 2),
        "mem_total": round(vm.total / GB, 2),
        "mem_used": round(mem_gateway + sum(mem_servers.values()), 3),
        "disk_total": round(disk.total / GB, 2),
        "disk_avail": round(disk.free / GB, 2),
    }
