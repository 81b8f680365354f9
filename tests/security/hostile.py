"""What every hostile-input test measures: a probe's latency during an attack, and RSS.

A test runs a :class:`Probe` (10 requests a second to a health path) once for a baseline
(idle, or during benign traffic of the attack's size) and once during its attack, and
asserts that the attack's p99 is at most :func:`latency_bound` of the baseline's;
memory tests read the front processes' RSS (:func:`front_workers`, :func:`rss`) before
and after and compare the growth with the bytes the attacker sent (:func:`rss_bound`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psutil
import requests

from tests.conftest import Gateway, wait_until

MIB = 1024 * 1024


class Probe:
    """Calls ``url`` at ``rate`` a second from a thread; records each call's latency.

    Used as a context manager around an attack. A call that fails or answers another
    status than ``expect`` counts as the probe's timeout (a refused probe is not fast).
    """

    def __init__(self, url: str, rate: float = 10.0, timeout: float = 10.0,
                 expect: int = 200, **kw: Any) -> None:
        self.url, self.rate, self.timeout, self.expect, self.kw = url, rate, timeout, expect, kw
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        session = requests.Session()
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                resp = session.get(self.url, timeout=self.timeout, **self.kw)
                ok = resp.status_code == self.expect
                if not ok:
                    self.failures.append(f"{resp.status_code} {resp.text[:200]}")
            except requests.RequestException as exc:
                ok = False
                self.failures.append(repr(exc))
            self.latencies.append(time.monotonic() - started if ok else self.timeout)
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        session.close()

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    def run_for(self, seconds: float) -> Probe:
        """Probe for ``seconds`` (the idle measurement)."""
        with self:
            self._stop.wait(seconds)
        return self

    def p99(self) -> float:
        """The 99th percentile latency in seconds (the worst one under 100 samples)."""
        assert self.latencies, "the probe made no call"
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def latency_bound(baseline_p99: float) -> float:
    """The most an attack may bring a probe's p99 to: max(50 ms, 3x the baseline's)."""
    return max(0.05, 3 * baseline_p99)


def assert_probe_held(baseline: Probe, attacked: Probe) -> None:
    """The attack left the probe's p99 within :func:`latency_bound` of the baseline's."""
    bound = latency_bound(baseline.p99())
    assert len(attacked.latencies) >= 5, attacked.latencies
    assert attacked.p99() <= bound, (
        f"probe p99 {attacked.p99() * 1000:.1f} ms during the attack, over "
        f"{bound * 1000:.1f} ms (baseline p99 {baseline.p99() * 1000:.1f} ms); "
        f"failures: {attacked.failures[:5]}")


def front_workers(gw: Gateway, count: int = 2) -> list[psutil.Process]:
    """The gateway front's ``count`` worker processes (children of its gunicorn master).

    A gateway answers once one front worker serves; gunicorn may fork the others a
    moment later, so this waits for all of them (the app is preloaded: a forked worker
    holds it already).
    """
    def is_front(p: psutil.Process) -> bool:
        try:
            return "basic_inference_server.gateway" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    def workers() -> list[psutil.Process]:
        found = [p for p in gw.tree() if is_front(p) and p.parent() is not None
                 and is_front(p.parent())]
        return found if len(found) == count else []

    return wait_until(workers, timeout=30, message=f"{count} front workers",
                      ignore=(psutil.Error,))


def server_workers(gw: Gateway) -> list[psutil.Process]:
    """The endpoint servers' worker processes (children of a server's gunicorn master)."""
    def server_of(p: psutil.Process) -> bool:
        try:
            return "basic_inference_server.server" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    return [p for p in gw.tree() if server_of(p) and p.parent() is not None
            and server_of(p.parent())]


def rss(procs: list[psutil.Process]) -> int:
    """The summed resident memory of ``procs`` (those gone count 0)."""
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def rss_bound(bytes_received: int) -> int:
    """The most RSS may grow while taking ``bytes_received``: 2x those bytes plus 16 MiB."""
    return 2 * bytes_received + 16 * MIB
