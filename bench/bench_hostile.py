#!/usr/bin/env python
"""Hostile small inputs against a live gateway: the ``/run`` latency and front memory
they cost, next to the idle figures.

    python bench/bench_hostile.py [--seconds S] [--idle 10] [--only h3,h4] [--json out.json]

It starts ``run_gateway.py`` of this checkout on free ports (a no-op endpoint, 2 front
workers, access log off), measures a probe client's ``POST /run`` latency (10 a second)
and the front workers' summed RSS while idle, then runs each attack in turn with the
probe running:

- ``h2``: 2 concurrent 64 KiB bodies of ``{"\\"\\...`` a second to ``/run`` (20 s);
- ``h3``: 50 connections sending headers that declare 64 MiB, and no body (10 s);
- ``h4``: one connection pipelining 2,000 ``GET /openapi.json`` and never reading (10 s);
- ``m3``: one 8 MiB ``[{},{},...]`` body a second to ``/jobs`` (10 s).

The report gives, for each, the probe's p99 and the front's peak RSS, and gates: the
exit status is 1 when an attack brings p99 over ``--ratio`` (3) times the idle p99
(never under ``--floor-ms``, 0 by default), or grows the front's RSS by 64 MiB or more
over its RSS just before the attack. ``--seconds`` sets every attack's length at once
(the per-attack ``--h2-seconds`` ... win). Only the ratios mean anything on a shared box.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
NOOP = '''from basic_inference_server import FlaskWorker


class NoopWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, inputs):
        return {"ok": True}

    def _post_process(self, pred):
        return pred
'''
RUN_BODY = b'{"SIGNATURE":"noop","INPUT_VALUE":42}'
JSON = {"Content-Type": "application/json"}
FRONT_WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Gateway:
    """``run_gateway.py`` of this checkout with one no-op endpoint, in a temp folder."""

    def __init__(self, folder: Path, python: str) -> None:
        self.port = free_port()
        (folder / "endpoints").mkdir()
        (folder / "endpoints" / "noop.py").write_text(NOOP)
        config = {"FIRST_SERVER_PORT": 0, "ACCESS_LOG": False, "GATEWAY_WORKERS": FRONT_WORKERS,
                  "CONFIG_ENDPOINTS": {"noop": {"NR_WORKERS": 2}}}
        (folder / "config_gateway.json").write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = open(folder / "gateway.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [python, str(REPO / "run_gateway.py"), "--host", "127.0.0.1", "--port",
             str(self.port), "--config", str(folder / "config_gateway.json"), "--endpoints",
             str(folder / "endpoints"), "--cache", str(folder / "cache")],
            cwd=folder, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 10) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=JSON if body is not None else {})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def wait_ready(self, deadline_s: float = 90) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            try:
                if (self.request("POST", "/run", RUN_BODY, timeout=2) == 200
                        and len(self.front_workers()) == FRONT_WORKERS):
                    return
            except (OSError, psutil.Error):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"gateway on {self.port} not ready; see {self.log.name}")

    def front_workers(self) -> list[psutil.Process]:
        def is_front(p: psutil.Process) -> bool:
            try:
                return "basic_inference_server.gateway" in " ".join(p.cmdline())
            except psutil.Error:
                return False

        root = psutil.Process(self.proc.pid)
        return [p for p in root.children(recursive=True)
                if is_front(p) and p.parent() is not None and is_front(p.parent())]

    def stop(self) -> None:
        tree = [self.proc.pid]
        try:
            tree += [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.Error:
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class Every:
    """Calls ``func`` every ``period`` seconds from a thread until stopped."""

    def __init__(self, period: float, func: Callable[[], None]) -> None:
        self.period, self.func = period, func
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.func()
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


class Probe:
    """``POST /run`` of the no-op endpoint on one kept-alive connection; a failure counts
    as the timeout."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.latencies: list[float] = []
        self.failures = 0
        self.conn: http.client.HTTPConnection | None = None

    def __call__(self) -> None:
        started = time.monotonic()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            self.conn.request("POST", "/run", body=RUN_BODY, headers=JSON)
            resp = self.conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            self.conn = None
        if not ok:
            self.failures += 1
        self.latencies.append(time.monotonic() - started if ok else self.timeout)

    def p99(self) -> float:
        ordered = sorted(self.latencies) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@contextmanager
def measured(gw: Gateway, port: int) -> Iterator[dict[str, Any]]:
    """Probe and sample the front's RSS around a block; the figures land in the dict."""
    procs = gw.front_workers()
    out: dict[str, Any] = {"rss_before": rss(procs)}
    peak = [out["rss_before"]]
    probe = Probe(port)
    sampler = Every(0.05, lambda: peak.append(max(peak[-1], rss(procs))))
    prober = Every(0.1, probe)
    try:
        yield out
    finally:
        prober.close()
        sampler.close()
        out.update(p99=probe.p99(), probes=len(probe.latencies), failures=probe.failures,
                   rss_peak=max(peak[-1], rss(procs)),
                   median=statistics.median(probe.latencies) if probe.latencies else None)


def paced(seconds: float, per_second: int, send: Callable[[], None]) -> None:
    """``per_second`` concurrent calls of ``send`` started each second for ``seconds``."""
    def worker() -> None:
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while next_at < end:
            try:
                send()
            except (OSError, http.client.HTTPException):
                pass
            next_at += 1.0
            time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(per_second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)


def attack_h2(gw: Gateway, seconds: float) -> None:
    body = b"{" + b'"\\' * ((64 * 1024 - 1) // 2)

    def send() -> None:
        gw.request("POST", "/run", body, timeout=120)

    paced(seconds, 2, send)


def hold(socks: list[socket.socket], seconds: float) -> None:
    time.sleep(seconds)
    for s in socks:
        s.close()


def attack_h3(gw: Gateway, seconds: float) -> None:
    head = (b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (64 * MIB))
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(head)
        socks.append(s)
    hold(socks, seconds)


def attack_h4(gw: Gateway, seconds: float) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", gw.port))
    s.settimeout(2)
    flood = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 2000
    try:
        s.sendall(flood)  # a front that stops reading leaves the rest unsent: fine
    except OSError:
        pass
    hold([s], seconds)


def attack_m3(gw: Gateway, seconds: float) -> None:
    n = (8 * MIB - 40) // 3
    body = b'{"SIGNATURE":"noop","X":[' + b"{}," * n + b"{}]}"

    def send() -> None:
        gw.request("POST", "/jobs", body, timeout=120)

    paced(seconds, 1, send)


ATTACKS: dict[str, tuple[Callable[[Gateway, float], None], float, str]] = {
    "h2": (attack_h2, 20, "2 x 64 KiB '{\"\\\\...' bodies a second to /run"),
    "h3": (attack_h3, 10, "50 connections declaring 64 MiB, no body"),
    "h4": (attack_h4, 10, "2,000 pipelined GET /openapi.json, never read"),
    "m3": (attack_m3, 10, "one 8 MiB [{},...] body a second to /jobs"),
}


def report(rows: list[dict[str, Any]], idle: dict[str, Any], args: argparse.Namespace) -> bool:
    bound = max(args.floor_ms / 1000, args.ratio * idle["p99"])
    print(f"\n{'phase':<6} {'s':>4} {'probes':>6} {'fail':>4} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'x idle':>6} {'RSS MiB':>8} {'+before':>8} {'+idle':>7}  gate")
    ok = True
    for row in [idle, *rows]:
        growth = (row["rss_peak"] - row["rss_before"]) / MIB
        over_idle = (row["rss_peak"] - idle["rss_before"]) / MIB
        gate = ""
        if row is not idle:
            bad = [what for what, failed in (("p99", row["p99"] > bound),
                                             ("RSS", growth >= args.rss_mib)) if failed]
            gate = "FAIL " + ",".join(bad) if bad else "ok"
            ok = ok and not bad
        print(f"{row['phase']:<6} {row['seconds']:>4g} {row['probes']:>6} {row['failures']:>4} "
              f"{(row['median'] or 0) * 1000:>7.1f} {row['p99'] * 1000:>7.1f} "
              f"{row['p99'] / idle['p99']:>6.1f} {row['rss_peak'] / MIB:>8.1f} "
              f"{growth:>8.1f} {over_idle:>7.1f}  {gate}")
    print(f"gates: p99 <= {bound * 1000:.1f} ms ({args.ratio:g} x idle p99"
          f"{f', at least {args.floor_ms:g} ms' if args.floor_ms else ''}); "
          f"RSS growth over the RSS before the attack < {args.rss_mib:g} MiB")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle probe")
    parser.add_argument("--seconds", type=float, help="every attack's length")
    for name, (_func, seconds, what) in ATTACKS.items():
        parser.add_argument(f"--{name}-seconds", type=float, help=f"{what} (default {seconds:g})")
    parser.add_argument("--settle", type=float, default=3, help="seconds between attacks")
    parser.add_argument("--only", default=",".join(ATTACKS), help="attacks to run, in order")
    parser.add_argument("--ratio", type=float, default=3.0)
    parser.add_argument("--floor-ms", type=float, default=0.0)
    parser.add_argument("--rss-mib", type=float, default=64.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        gw = Gateway(Path(folder), args.python)
        try:
            gw.wait_ready()
            for _ in range(50):  # warm every front worker's pools and caches
                gw.request("POST", "/run", RUN_BODY)
            with measured(gw, gw.port) as idle:
                time.sleep(args.idle)
            idle.update(phase="idle", seconds=args.idle)
            rows = []
            for name in [n.strip() for n in args.only.split(",") if n.strip()]:
                func, default, what = ATTACKS[name]
                seconds = getattr(args, f"{name}_seconds") or args.seconds or default
                print(f"{name}: {what}, {seconds:g} s", flush=True)
                with measured(gw, gw.port) as row:
                    func(gw, seconds)
                row.update(phase=name, seconds=seconds)
                rows.append(row)
                time.sleep(args.settle)
        finally:
            gw.stop()
    ok = report(rows, idle, args)
    if args.json:
        args.json.write_text(json.dumps({"idle": idle, "attacks": rows, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
