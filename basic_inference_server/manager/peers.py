"""Which local process is on the other end of a TCP connection (Linux ``/proc``).

The support process reports its status over HTTP with the original's scripts,
unchanged, so it carries no secret. The front passes the manager the peer address
and port of the connection; the connection's socket, found in ``/proc/net/tcp{,6}``
by that local address, is then looked up among the open files of the support
process's tree. Only a process of that tree can own it.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Iterable

import psutil

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _decode(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``0100007F:1F90`` -> (127.0.0.1, 8080); /proc prints each 32-bit word natively."""
    hex_addr, _, hex_port = field.partition(":")
    raw = b"".join(struct.pack("=I", int(hex_addr[i:i + 8], 16))
                   for i in range(0, len(hex_addr), 8))
    addr = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped, int(hex_port, 16)
    return addr, int(hex_port, 16)


def _normal(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def socket_inodes(addr: str, port: int) -> set[int]:
    """Inodes of the TCP sockets whose local end is ``addr:port``."""
    want = (_normal(addr), int(port))
    found: set[int] = set()
    for table in TCP_TABLES:
        try:
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and _decode(cols[1]) == want:
                        found.add(int(cols[9]))
        except OSError:
            continue
    found.discard(0)
    return found


def tree_of(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def owner_in(pids: Iterable[int], inodes: set[int]) -> int | None:
    """The first of ``pids`` holding a socket among ``inodes`` open; None if none does."""
    links = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{folder}/{fd}") in links:
                    return pid
            except OSError:
                continue
    return None


def peer_in_tree(addr: str, port: int, root_pid: int) -> bool:
    """True when the connection from ``addr:port`` belongs to ``root_pid``'s tree."""
    try:
        inodes = socket_inodes(addr, port)
    except ValueError:
        return False
    return bool(inodes) and owner_in(tree_of(root_pid), inodes) is not None
