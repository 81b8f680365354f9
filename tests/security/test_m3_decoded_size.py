"""Row M3: no body or answer costs the front tens of times its size when decoded.

A decoded value takes 30-80 times the bytes it is written with: an 8 MiB ``[{},{},...]``
grew a front process by 421 MiB on ``/jobs``, 662 MiB on a pipeline, and taking
``USAGE`` out of a 16 MiB answer by 535 MiB, with a 1 s stall of the loop. Depth was
bounded, the count of values was not. Now every decode is preceded by a C-speed count
(``MAX_JSON_ELEMENTS``, a 413 naming it), and a large answer's ``USAGE`` is cut from its
bytes, never decoded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import requests

from basic_inference_server.protocol import MAX_JSON_ELEMENTS
from tests.conftest import FIXTURE_ENDPOINTS, write_endpoint
from tests.security.hostile import Probe, assert_probe_held, front_workers, rss, rss_bound

BIG_ANSWER = '''
from basic_inference_server import FlaskWorker


class BigAnswerWorker(FlaskWorker):
    """Answers ROWS empty objects, and the units the request used."""

    def _pre_process(self, inputs):
        return int(inputs.get("ROWS", 1))

    def _predict(self, rows):
        return rows

    def _post_process(self, rows):
        return {"ROWS": [{}] * rows, "USAGE": 2}
'''
PIPELINE = {"STEPS": [{"ID": "e", "SIGNATURE": "echo", "INPUT": {"X": "$input.X"}}]}
ANSWER_ROWS = 5_500_000  # about 16 MiB of answer

# Run apart from the probe (its own process and GIL): one hostile request a second, each
# kind in turn, for the given seconds; prints what came back: statuses, bytes sent and
# received. Its "benign" run (the probe's baseline) sends the same bytes, the same big
# answer's request, and bodies that the front refuses once decoded, each value of them
# one string instead of millions of objects.
ATTACK = """
import json, sys, threading, time
import requests

url, key, answer_rows, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
hostile = sys.argv[5] == "hostile"
rows = b",".join([b"{}"] * (8 * 1024 * 1024 // 3))
echo, pipe = b"echo", b"pipe"
if not hostile:
    rows, echo, pipe = b'"' + b"a" * (len(rows) - 2) + b'"', b"nosuch", b"nosuch"
attacks = [
    ("/jobs", b'{"SIGNATURE": "' + echo + b'", "X": [' + rows + b"]}"),
    ("/jobs", b"[" + rows + b"]"),
    ("/run", b'{"SIGNATURE": "' + echo + b'", "ASYNC": true, "X": [' + rows + b"]}"),
    ("/run", b'{"SIGNATURE": "' + pipe + b'", "X": [' + rows + b"]}"),
    ("/run", b'{"SIGNATURE": "big", "ROWS": %d}' % answer_rows),
]
seen, sent, received = [], 0, 0
tick = threading.Event()
end = time.monotonic() + seconds
with requests.Session() as http:
    while time.monotonic() < end:
        path, body = attacks[len(seen) % len(attacks)]
        started = time.monotonic()
        resp = http.post(url + path, data=body, timeout=60, headers={
            "Authorization": "Bearer " + key, "Content-Type": "application/json"})
        sent += len(body)
        received += len(resp.content)
        error = resp.json() if resp.status_code != 200 else {}
        seen.append([path, resp.status_code, error.get("MAX_JSON_ELEMENTS"),
                     b'"USAGE"' in resp.content, len(resp.content)])
        tick.wait(max(0.0, 1.0 - (time.monotonic() - started)))
print(json.dumps({"seen": seen, "sent": sent, "received": received}), flush=True)
"""


def test_large_counts_of_values_are_refused_before_decoding(gateways, tmp_path):
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    write_endpoint(endpoints, "big_answer", BIG_ANSWER)
    gw = gateways({"API_KEYS": True, "CONFIG_ENDPOINTS": {
        "echo": {}, "big": {"SERVER_CLASS": "big_answer"}, "pipe": {"PIPELINE": PIPELINE}}},
        endpoints=endpoints)
    gw.wait_state("big", "READY", timeout=60)
    key = gw.post("/keys", {"TENANT": "acme"}).json()["KEY"]
    auth = {"Authorization": f"Bearer {key}"}
    # Every path once with a small body, so that what it loads lazily is loaded.
    for path, body in (("/jobs", {"SIGNATURE": "echo"}), ("/run", {"SIGNATURE": "pipe", "X": 1}),
                       ("/run", {"SIGNATURE": "big", "ROWS": 3})):
        assert requests.post(gw.url(path), json=body, headers=auth, timeout=30).status_code \
            in (200, 202)
    fronts = front_workers(gw)

    def attack(kind: str) -> tuple[Probe, dict]:
        """The probe during the attack script's ``kind`` of run, and its report."""
        with Probe(gw.url("/health/live")) as probe:
            run = subprocess.run([sys.executable, "-c", ATTACK, gw.base, key, str(ANSWER_ROWS),
                                  "12", kind], capture_output=True, text=True, timeout=300,
                                 check=True)
        return probe, json.loads(run.stdout)

    # The same traffic, but for the counts of values: what this machine's latency is now.
    baseline, _ = attack("benign")
    before = rss(fronts)
    attacked, report = attack("hostile")
    grown = rss(fronts) - before
    for path, status, limit, usage, size in report["seen"]:
        if status == 200:  # the large answer: whole, its USAGE cut out
            assert path == "/run" and not usage and size > 15 * 1024 * 1024
        else:
            assert (status, limit) == (413, MAX_JSON_ELEMENTS), (path, status, limit)
    assert len(report["seen"]) >= 10 and any(seen[1] == 200 for seen in report["seen"])
    handled = report["sent"] + report["received"]
    assert grown < rss_bound(handled), (
        f"the front processes grew by {grown / 2**20:.0f} MiB handling "
        f"{handled / 2**20:.0f} MiB (bound {rss_bound(handled) / 2**20:.0f} MiB)")
    assert_probe_held(baseline, attacked)
