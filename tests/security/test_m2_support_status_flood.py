"""Row M2: posting ``/support_update_status`` in a flood does not starve the manager.

Each report's caller is looked up (is it the support process?) off the manager's loop,
with one netlink query by both ends of its connection instead of a parse of every line
of ``/proc/net/tcp{,6}`` on the loop (28 ms a report at rest, more with more
connections on the box). 24 concurrent posters leave ``/health/live`` (a ping answered
by the manager's loop) within the probe's bound of its latency while the same posters
flood a path that the front answers alone. Callers refused
before any lookup are rate-limited (429 once the budget is spent).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from basic_inference_server.manager.control import REFUSALS_PER_S
from tests.conftest import assert_error, wait_until
from tests.security.hostile import Probe, assert_probe_held

POSTERS = 24
# Each poster's rate: together (120 a second) over three times what a check of 28 ms
# on the loop can take, and well within what the front serves on a small box.
POSTS_PER_S = 5

# Run apart from the probe (its own process and GIL): the posters until stdin closes;
# prints the status codes it got.
FLOOD = """
import collections, json, sys, threading
import requests

url, rate, posters = sys.argv[1], *map(int, sys.argv[2:])
codes = collections.Counter()
stop = threading.Event()

def post():
    with requests.Session() as s:
        while not stop.wait(1 / rate):
            try:
                codes[s.post(url, json={"SIGNATURE": "support_process"}, timeout=10).status_code] += 1
            except requests.RequestException as exc:
                codes[type(exc).__name__] += 1

threads = [threading.Thread(target=post) for _ in range(posters)]
for t in threads:
    t.start()
print("started", flush=True)
sys.stdin.read()
stop.set()
for t in threads:
    t.join()
print(json.dumps(codes), flush=True)
"""


def flooded(gw, path: str) -> tuple[Probe, dict[str, int]]:
    """The probe of ``/health/live`` while the posters flood ``path``, and their codes."""
    argv = [gw.url(path), POSTS_PER_S, POSTERS]
    with subprocess.Popen([sys.executable, "-c", FLOOD, *map(str, argv)], text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as flood:
        assert flood.stdout is not None and flood.stdin is not None
        assert flood.stdout.readline().strip() == "started"
        probe = Probe(gw.url("/health/live")).run_for(6)
        flood.stdin.close()
        return probe, json.loads(flood.stdout.readline())


def test_posters_do_not_starve_the_manager(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {
        "support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 3600}}})
    # The same flood on a path the front answers alone (404), the manager left out: what
    # the posters cost this machine's latency now.
    baseline, codes = flooded(gw, "/no_such_path")
    assert set(codes) == {"404"}, codes
    attacked, codes = flooded(gw, "/support_update_status")
    assert_probe_held(baseline, attacked)
    # Every poster was refused (none of them is the support process), and many were.
    assert set(codes) <= {"403", "429", "503"}, codes
    assert sum(codes.values()) > 6 * POSTERS * POSTS_PER_S / 2, codes


def test_refusals_without_a_lookup_are_rate_limited(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})

    def refused(_: int) -> requests.Response:
        return gw.post("/support_update_status", {"SIGNATURE": "nobody"})

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(refused, range(200)))
    # At most a burst of twice the rate, then the rate (one more for rounding).
    allowed = 2 * REFUSALS_PER_S + REFUSALS_PER_S * (time.monotonic() - started) + 1
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {404, 429} and statuses.count(404) <= allowed, statuses
    assert allowed < 150, "the machine is too slow for this test"
    limited = next(a for a in answers if a.status_code == 429)
    assert assert_error(limited, 429)["ERROR_TYPE"] == "rate_limited"
    # The budget refills: a later caller is answered again.
    wait_until(lambda: refused(0).status_code == 404, timeout=10)
