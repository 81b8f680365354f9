"""The ledger's promise end to end: 10,000 requests from 20 tenants through 2 gateways
sharing keys (Redis) and a ledger (PostgreSQL), one gateway SIGKILLed midway and started
again on its cache folder; PostgreSQL then holds exactly the 200s the clients got.

The killed gateway is killed with none of its requests in flight: a request whose
answer dies with the process was journaled, or not, and its client cannot know which,
so it could not be counted against the clients' tally. Its manager, where the shipper
runs, is stopped (SIGSTOP) a while before the kill while its front keeps answering, so
the kill leaves journal entries that were never shipped. The other gateway takes
traffic throughout.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import psycopg
import requests

from basic_inference_server.ledger.shipper import gateway_id
from tests.conftest import spawn_gateway, wait_until, with_test_defaults
from tests.tenants.conftest import make_key, ready, store_overlay

TENANTS = 20
PER_TENANT = 500  # 10,000 requests in all


class Traffic:
    """Which gateway the clients may use; the killed one's requests in flight."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.cond = threading.Condition()
        self.open = [True, True]
        self.in_flight = [0, 0]
        self.done = 0

    def take(self, i: int) -> int:
        with self.cond:
            which = i % 2 if self.open[i % 2] else 1 - i % 2
            self.in_flight[which] += 1
            return which

    def give(self, which: int) -> None:
        with self.cond:
            self.in_flight[which] -= 1
            self.done += 1
            self.cond.notify_all()

    def close(self, which: int) -> None:
        """No new request to ``which``; returns once none is in flight there."""
        with self.cond:
            self.open[which] = False
            assert self.cond.wait_for(lambda: self.in_flight[which] == 0, timeout=60)

    def reopen(self, which: int, url: str) -> None:
        with self.cond:
            self.urls[which] = url
            self.open[which] = True


def ledger_ok(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tenant, sum(ok) FROM bis_usage GROUP BY tenant").fetchall()
    return {tenant: int(ok) for tenant, ok in rows}


def unshipped(dsn: str, cache) -> int:
    """Journal bytes of a cache folder that PostgreSQL has not added yet."""
    with psycopg.connect(dsn) as conn:
        at = dict(conn.execute("SELECT source, shipped FROM bis_ledger_sources WHERE gateway = %s",
                               (gateway_id(cache),)).fetchall())
    return sum(p.stat().st_size - at.get(p.name, 0) for p in (cache / "ledger").glob("*.jsonl"))


def test_the_ledger_counts_each_answered_request_once_across_a_sigkill(
        gateways, pg_dsn, request) -> None:
    config = {"API_KEYS": True, "LEDGER_POSTGRES": pg_dsn, "ACCESS_LOG": False,
              "GATEWAY_WORKERS": 2, "CONFIG_ENDPOINTS": {"echo": {"SERVER_CLASS": "echo"}},
              **store_overlay("redis", request)}
    pair = [ready(gateways(config)), ready(gateways(config))]
    keys = [make_key(pair[0], TENANT=f"t{n:02d}")["KEY"] for n in range(TENANTS)]
    traffic = Traffic([gw.base for gw in pair])
    got: Counter[str] = Counter()
    failures: list[str] = []

    def client(n: int) -> None:
        tenant, header = f"t{n:02d}", {"Authorization": f"Bearer {keys[n]}"}
        sessions = [requests.Session(), requests.Session()]
        try:
            for i in range(PER_TENANT):
                which = traffic.take(n + i)
                try:
                    resp = sessions[which].post(traffic.urls[which] + "/run", headers=header,
                                                json={"SIGNATURE": "echo", "i": i}, timeout=60)
                    if resp.status_code == 200:
                        got[tenant] += 1
                    else:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")
                finally:
                    traffic.give(which)
        except requests.RequestException as exc:
            failures.append(repr(exc))
        finally:
            for s in sessions:
                s.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(TENANTS)]
    for t in threads:
        t.start()
    victim = pair[1]
    with traffic.cond:
        assert traffic.cond.wait_for(lambda: traffic.done >= TENANTS * PER_TENANT // 2, 300)
    # The manager (its shipper) stopped, its front going on: the kill is sure to find
    # journal entries not shipped yet.
    os.kill(victim.proc.pid, signal.SIGSTOP)
    with traffic.cond:
        assert traffic.cond.wait_for(lambda: traffic.done >= TENANTS * PER_TENANT * 6 // 10, 300)
    traffic.close(1)
    victim.stop()  # SIGKILL of its whole process tree, asserted gone
    cache = victim.workdir / "_cache"
    left = unshipped(pg_dsn, cache)
    assert left > 0
    again = spawn_gateway(victim.workdir, with_test_defaults(config))
    gateways.started.append(again)
    ready(again)
    traffic.reopen(1, again.base)
    for t in threads:
        t.join(300)
    assert not failures, failures[:5]
    assert sum(got.values()) == TENANTS * PER_TENANT
    # Every answered request counted once: the killed journal's tail is shipped by the
    # gateway started on its folder, and nothing it had shipped is added again.
    wanted = dict(got)
    wait_until(lambda: ledger_ok(pg_dsn) == wanted, timeout=60, interval=0.2,
               message=f"the ledger holds the clients' 200s ({left} journal bytes were "
                       "unshipped at the kill)", ignore=(psycopg.Error,))
    # The killed processes' segments are shipped to their end, then deleted.
    wait_until(lambda: unshipped(pg_dsn, cache) == 0 and unshipped(
        pg_dsn, pair[0].workdir / "_cache") == 0, timeout=30, interval=0.2,
        ignore=(OSError, psycopg.Error))
    assert ledger_ok(pg_dsn) == wanted
