"""A small lab of "hosts" on one machine: Linux network namespaces on a private bridge.

Every host is a namespace with one veth interface and one address of a random
10.x.y.0/24 that exists nowhere else; the bridge itself lives in a namespace of its
own, so the machine's own network never sees the lab. Cutting a host off downs its
port on the bridge. :meth:`Lab.close` kills whatever runs in the lab's namespaces and
deletes them, whatever state the test left them in.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IP = "/usr/sbin/ip" if Path("/usr/sbin/ip").exists() else "ip"


def sh(*args: str) -> str:
    return subprocess.run([IP, *args], check=True, capture_output=True, text=True,
                          timeout=30).stdout


def used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this machine's own interfaces (the lab must not overlap them)."""
    out = sh("-4", "-o", "addr", "show")
    return [ipaddress.ip_interface(line.split()[3]).network for line in out.splitlines()]


def free_subnet() -> ipaddress.IPv4Network:
    used = used_networks()
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free private /24 for the lab")


@dataclass
class Host:
    name: str
    ns: str
    addr: str
    port: str  # the bridge's side of the host's veth pair
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Lab:
    """Namespaces ``bislab-<tag>-<host>`` plus ``bislab-<tag>-sw`` holding the bridge."""

    def __init__(self, folder: Path) -> None:
        self.tag = os.urandom(3).hex()
        self.folder = folder
        self.net = free_subnet()
        self.switch = f"bislab-{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self._add_ns(self.switch)
        sh("-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("-n", self.switch, "link", "set", "br0", "up")

    def _add_ns(self, ns: str) -> None:
        sh("netns", "add", ns)
        self.namespaces.append(ns)
        sh("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 2
        ns = f"bislab-{self.tag}-{name}"
        port = f"bl{self.tag}{index}"  # interface names: 15 characters at most
        addr = str(self.net.network_address + index)
        self._add_ns(ns)
        # Created in the switch namespace, the host end moved at once: no end of the pair
        # ever sits in the machine's own namespace.
        sh("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("-n", ns, "addr", "add", f"{addr}/{self.net.prefixlen}", "dev", "eth0")
        sh("-n", ns, "link", "set", "eth0", "up")
        host = self.hosts[name] = Host(name, ns, addr, port)
        return host

    def link(self, host: Host, up: bool) -> None:
        sh("-n", self.switch, "link", "set", host.port, "up" if up else "down")

    def spawn(self, host: Host, argv: list[str], log_name: str, **kw: Any) -> subprocess.Popen[bytes]:
        """Run ``argv`` on ``host``, in a new session, output to ``<folder>/<log_name>``."""
        with open(self.folder / log_name, "ab") as out:
            proc = subprocess.Popen([IP, "netns", "exec", host.ns, *argv], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, **kw)
        host.procs.append(proc)
        return proc

    def kill(self, host: Host) -> None:
        """SIGKILL every process group started on the host, and reap them."""
        for proc in host.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        host.procs.clear()

    def pids(self, host: Host) -> set[int]:
        out = subprocess.run([IP, "netns", "pids", host.ns], capture_output=True, text=True,
                             timeout=30).stdout
        return {int(p) for p in out.split()}

    def close(self) -> None:
        """Kill everything in the lab's namespaces, then delete them (best effort, all)."""
        for host in self.hosts.values():
            try:
                self.kill(host)
            except (OSError, subprocess.SubprocessError):
                pass
        for ns in self.namespaces:
            for pid in self._ns_pids(ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in reversed(self.namespaces):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=30)

    @staticmethod
    def _ns_pids(ns: str) -> list[int]:
        out = subprocess.run([IP, "netns", "pids", ns], capture_output=True, text=True,
                             timeout=30).stdout
        return [int(p) for p in out.split()]
