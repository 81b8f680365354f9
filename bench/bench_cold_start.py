#!/usr/bin/env python
"""Scale to zero: cold starts of an endpoint with MIN_WORKERS 0, and what they cost others.

    python bench/bench_cold_start.py [--trials 1000] [--concurrency 8] [--json PATH]

One gateway serves ``lazy`` (the echo endpoint, 2 workers, ``MIN_WORKERS: 0``,
``IDLE_TIMEOUT`` 0.5 s), ``steady`` (the same, always up) and ``echo`` (2 workers, the
neighbour). Each trial waits for ``lazy`` to be IDLE (scaled to zero) and for every
process of its last generation to be gone, then sends ``--concurrency`` first requests
at once. A request passes when it succeeded within that trial's spawn-to-READY time
(``start_s`` in /list_servers) plus 150 ms.

Meanwhile a thread calls ``echo`` in a loop; its errors and its p99 are reported for the
cold starts, and for as many reloads of ``steady`` (/reload_server: a new generation
loads beside the serving one), the comparison the issue asks for. The RSS of the manager
and of the front is read after the 10th trial (warm-up: imports, pools) and every 100
trials after it; judged is the growth over the 100 cycles from the 10th trial (the whole
run's too, for the record: the manager's bounded buffers, 1,000 history events and
1,440 health samples, fill over the first minutes and hours).

The exit status is 1 when a request failed or came late, the neighbour saw an error, a
process was left behind or the RSS grew 2 % or more; slow neighbour figures are
reported, not failures (this box's speed drifts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bench_gateway import (
    BenchError,
    Gateway,
    bench_config,
    checked_stop,
    http_json,
    log,
    poll,
)
from openai_peer_common import run_in_scratch

SLACK_S = 0.150  # past the trial's spawn-to-READY, per request
RSS_GROWTH_MAX = 0.02  # over RSS_CYCLES cycles
RSS_FROM_TRIAL = 10  # the first trials warm caches up (imports, pools)
RSS_CYCLES = 100


@dataclass
class Trial:
    """One cold start: each first request's status and latency, and spawn to READY."""

    statuses: list[int]
    latencies: list[float]
    start_s: float

    @property
    def late(self) -> int:
        """Requests that took longer than spawn-to-READY plus :data:`SLACK_S`."""
        return sum(1 for t in self.latencies if t > self.start_s + SLACK_S)

    @property
    def failed(self) -> int:
        """Requests that did not get a 200."""
        return sum(1 for s in self.statuses if s != 200)


@dataclass
class Neighbour:
    """Calls one endpoint in a loop; latencies and errors are filed under the phase."""

    port: int
    name: str
    phase: str = "warmup"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = json.dumps({"SIGNATURE": self.name, "INPUT_VALUE": "n"}).encode()
        while not self.stop.is_set():
            phase, started = self.phase, time.perf_counter()
            try:
                conn.request("POST", "/run", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
                error = f"{resp.status}"
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                ok, error = False, repr(exc)
            if ok:
                self.latencies.setdefault(phase, []).append(time.perf_counter() - started)
            else:
                self.errors.setdefault(phase, []).append(error)
            self.stop.wait(0.005)
        conn.close()

    def p99(self, phase: str) -> float | None:
        values = sorted(self.latencies.get(phase, []))
        return values[int(0.99 * (len(values) - 1))] if values else None


def endpoints(idle_timeout: float) -> dict[str, Any]:
    return {"echo": {"NR_WORKERS": 2},
            "lazy": {"SERVER_CLASS": "echo", "NR_WORKERS": 2, "MIN_WORKERS": 0,
                     "IDLE_TIMEOUT": idle_timeout},
            "steady": {"SERVER_CLASS": "echo", "NR_WORKERS": 2}}


def server_tree(pid: int | None) -> list[psutil.Process]:
    """An endpoint server's master and workers (empty when it is gone)."""
    if pid is None:
        return []
    try:
        master = psutil.Process(pid)
        return [master, *master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def wait_idle(gw: Gateway, name: str, last: list[psutil.Process], timeout: float) -> None:
    """Until ``name`` is IDLE and every process of its last generation has exited."""
    poll(f"{name} IDLE", lambda: gw.servers()[name]["state"] == "IDLE", timeout,
         alive=gw.check_alive)
    poll(f"{name}'s processes gone", lambda: gone(last), timeout, alive=gw.check_alive)


def cold_trial(gw: Gateway, name: str, concurrency: int, timeout: float) -> Trial:
    """``concurrency`` first requests at once to ``name`` (IDLE); they start it."""
    barrier = threading.Barrier(concurrency)
    statuses, latencies = [0] * concurrency, [0.0] * concurrency

    def one(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        try:
            status, _ = http_json(gw.port, "POST", "/run",
                                  {"SIGNATURE": name, "INPUT_VALUE": i}, timeout)
        except (OSError, http.client.HTTPException):
            status = 0
        statuses[i], latencies[i] = status, time.perf_counter() - started

    threads = [threading.Thread(target=one, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Trial(statuses, latencies, float(gw.servers()[name]["start_s"] or 0.0))


def reload_once(gw: Gateway, name: str, timeout: float) -> None:
    """/reload_server ``name``, until the new generation serves and the old one is gone."""
    old = gw.servers()[name]
    before = server_tree(old["pid"])
    status, body = gw.call("POST", "/reload_server", {"SIGNATURE": name})
    if status != 200:
        raise BenchError(f"/reload_server {name} answered {status}: {body}")
    poll(f"{name} reloaded", lambda: gw.servers()[name]["pid"] not in (None, old["pid"])
         and gw.servers()[name]["state"] == "READY", timeout, alive=gw.check_alive)
    poll(f"{name}'s old generation gone", lambda: gone(before), timeout, alive=gw.check_alive)


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def front_and_manager(gw: Gateway) -> dict[str, list[int]]:
    """The manager's pid, and the front's master and workers."""
    status, body = gw.call("GET", "/list_servers")
    if status != 200 or body is None:
        raise BenchError(f"/list_servers answered {status}")
    front = body["GATEWAY"]["front_pid"]
    return {"manager": [body["GATEWAY"]["pid"]],
            "front": [p.pid for p in server_tree(front)]}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    config = bench_config(endpoints(args.idle_timeout))
    gw = Gateway("cold", config, workdir).start()
    results: dict[str, Any] = {"trials": args.trials, "concurrency": args.concurrency,
                               "slack_ms": SLACK_S * 1000}
    neighbour = Neighbour(gw.port, "echo")
    thread = threading.Thread(target=neighbour.run, daemon=True)
    try:
        gw.wait_ready(120)
        thread.start()
        trials: list[Trial] = []
        last = server_tree(gw.servers()["lazy"]["pid"])
        curve: dict[int, dict[str, int]] = {}  # trial -> RSS of the manager and the front
        neighbour.phase = "cold"
        for i in range(1, args.trials + 1):
            wait_idle(gw, "lazy", last, args.timeout)
            trials.append(cold_trial(gw, "lazy", args.concurrency, args.timeout))
            last = server_tree(gw.servers()["lazy"]["pid"])
            if i == args.trials or (i >= RSS_FROM_TRIAL and (i - RSS_FROM_TRIAL) % RSS_CYCLES == 0):
                wait_idle(gw, "lazy", last, args.timeout)  # the same state at each reading
                curve[i] = {role: rss(p) for role, p in front_and_manager(gw).items()}
        first = curve[min(curve)]
        window = curve.get(RSS_FROM_TRIAL + RSS_CYCLES, curve[max(curve)])
        growth = {role: (window[role] - first[role]) / first[role] for role in first}
        whole = {role: (curve[max(curve)][role] - first[role]) / first[role] for role in first}
        neighbour.phase = "reload"
        for _ in range(args.reloads if args.reloads is not None else args.trials):
            reload_once(gw, "steady", args.timeout)
        neighbour.phase = "done"
        overhead = sorted(max(t.latencies) - t.start_s for t in trials)
        cold_p99, reload_p99 = neighbour.p99("cold"), neighbour.p99("reload")
        results.update({
            "requests": sum(len(t.statuses) for t in trials),
            "failed": sum(t.failed for t in trials),
            "late": sum(t.late for t in trials),
            "start_s_median": statistics.median(t.start_s for t in trials),
            "overhead_ms": {"median": 1000 * statistics.median(overhead),
                            "p99": 1000 * overhead[int(0.99 * (len(overhead) - 1))],
                            "max": 1000 * overhead[-1]},
            "rss_growth": growth,
            "rss_growth_whole_run": whole,
            "rss_curve_mib": {t: {r: round(v / 2**20, 2) for r, v in c.items()}
                              for t, c in curve.items()},
            "neighbour": {"errors": {p: len(e) for p, e in neighbour.errors.items()},
                          "first_errors": [e for es in neighbour.errors.values() for e in es][:5],
                          "p99_ms_cold": None if cold_p99 is None else 1000 * cold_p99,
                          "p99_ms_reload": None if reload_p99 is None else 1000 * reload_p99,
                          "p99_ratio": (cold_p99 / reload_p99
                                        if cold_p99 and reload_p99 else None)},
        })
    except BenchError as exc:  # the manager's side of it, for whoever reads the failure
        raise BenchError(f"{exc}\ngateway log:\n{gw.log_tail(80, access=False)}") from None
    finally:
        neighbour.stop.set()
        if thread.is_alive():
            thread.join(timeout=30)
        checked_stop(gw, results)
    return results


def verdict(results: dict[str, Any]) -> list[str]:
    """What failed, in words (empty: the run passes)."""
    problems = []
    if results["failed"] or results["late"]:
        problems.append(f"{results['failed']} failed and {results['late']} late first requests")
    if any(results["neighbour"]["errors"].values()):
        problems.append(f"the neighbour saw errors: {results['neighbour']['errors']}")
    grown = {r: g for r, g in results["rss_growth"].items() if g >= RSS_GROWTH_MAX}
    if grown:
        problems.append(f"RSS grew 2 % or more over {RSS_CYCLES} cycles: {grown}")
    problems += results.get("cleanup_errors", [])
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000, help="cold starts (1000)")
    p.add_argument("--concurrency", type=int, default=8, help="first requests at once (8)")
    p.add_argument("--reloads", type=int, default=None,
                   help="reloads of the always-up endpoint, for the neighbour's p99 (= trials)")
    p.add_argument("--idle-timeout", type=float, default=0.5, help="IDLE_TIMEOUT of lazy (0.5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds any one wait may take")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.trials < 1 or args.concurrency < 1:
        p.error("--trials and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_in_scratch("bench_cold_start", run, args)
    if results is None:
        return 2
    problems = verdict(results)
    results["problems"] = problems
    text = json.dumps(results, indent=2)
    log(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    for problem in problems:
        log(f"FAIL: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
