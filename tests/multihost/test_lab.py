"""The namespace lab leaves nothing behind: its processes die and its namespaces go."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_until
from tests.multihost.netns import Lab, sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def test_close_kills_everything_and_deletes_the_namespaces(tmp_path: Path):
    lab = Lab(tmp_path)
    try:
        a, b = lab.add_host("a"), lab.add_host("b")
        assert a.addr != b.addr and ipaddress.ip_address(a.addr) in lab.net
        # A process the lab did not start itself (a daemon that left its session) is
        # found through the namespace and killed too.
        server = lab.spawn(a, [sys.executable, "-m", "http.server", "--bind", a.addr, "8000"],
                           "server.log")
        ping = f"import urllib.request; urllib.request.urlopen('http://{a.addr}:8000/', timeout=1)"
        wait_until(lambda: lab.spawn(b, [sys.executable, "-c", ping], "ping.log").wait(10) == 0,
                   timeout=30, message="b reaches a across the bridge")
        lab.link(b, up=False)
        assert lab.spawn(b, [sys.executable, "-c", ping], "cut.log").wait(30) != 0
        lab.spawn(a, ["setsid", "sleep", "600"], "stray.log")

        def stray() -> list[int]:
            return [p for p in lab.pids(a) if psutil.Process(p).name() == "sleep"]

        wait_until(stray, timeout=10, ignore=(psutil.Error,))
        pids = lab.pids(a)
        assert server.pid in pids
        assert a.addr not in sh("-4", "-o", "addr", "show")  # nothing in the machine's namespace
    finally:
        lab.close()
    assert not [ns for ns in lab.namespaces if ns in sh("netns", "list")]
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                               for p in pids), timeout=10, message="the lab's processes died",
               ignore=(psutil.Error,))  # (one may exit between the two reads)
