#!/usr/bin/env python
"""Weighted fair queueing (FAIR_QUEUEING) on a busy endpoint, against the same gateway
with it off, in one run.

    python bench/bench_fairness.py [--scenarios noisy,shares,weights,windows,cost] \\
        [--rounds 3] [--seconds 20] [--interactive 1000] [--cost-rounds 11] \\
        [--cost-seconds 4] [--conc 1,16] [--cost-fair-slots N] [--quick] [--json out.json]

Two gateways of this checkout, identical but for ``FAIR_QUEUEING`` (``on``, ``off``),
serve ``busy`` (bench/deadline_app/busy.py: 20 ms of CPU a request, ``NR_WORKERS`` 2, as
the peer harness's ``cpu``) with ``GATEWAY_WORKERS`` 2; ``TENANTS`` name the classes and
weights below, and ``busy``'s ``MAX_IN_FLIGHT`` is 256 (its default, 64, would refuse
``inter`` beside the flood). Both start once and serve every load scenario; each round loads them in
turn, the order alternating between rounds, so the machine's drift moves them together.

- ``noisy``: tenant ``flood`` (class ``batch``) keeps 64 requests in flight (wrk) while
  tenant ``inter`` (class ``interactive``) sends 5 requests a second (open loop), each
  timed from its send to its answer. Three conditions a round: ``idle`` (``inter`` alone
  on the ``on`` gateway), ``on`` and ``off`` (with the flood). Judged: p99 ``on`` is at
  most 2x p99 ``idle``, over ``--interactive`` requests per condition in all.
- ``shares``: equal weights, tenants at 48, 8, 4 and 4 requests in flight (closed loop):
  answers per tenant over the measured seconds. Judged: every ``on`` share is within
  10 % of 1/4.
- ``weights``: weights 3 and 1, 8 in flight each. Judged: the ``on`` ratio of answers is
  within 10 % of 3.
- ``windows``: weights 3, 2 and 1 at 8, 16 and 4 in flight; every 10 s window (sliding
  by 1 s) of the answers' completion times. Judged: each tenant's share in every ``on``
  window is within 5 % of its weight's share.
- ``cost``: the peer harness's ``noop`` endpoint (2 workers) behind an ``on`` and an
  ``off`` gateway (``GATEWAY_WORKERS`` 2), a new pair each round, wrk on ``POST /run``
  at each concurrency of ``--conc``, CPU time of each gateway's whole process tree over
  the measured seconds per request; in a round the two take turns a second at a time
  (``--cost-seconds`` each). Judged per concurrency: the median of the rounds' ratios
  (``on`` / ``off``) is at most 1.03. At c=1 nothing waits (the queue's bookkeeping
  alone); at c=16 the workers' slots adapt to the endpoint's speed (``FAIR_BACKLOG_MS``)
  and few requests wait in the front.

The shares of ``off`` show what the fair queue replaces. Closed-loop tenants count only
the answers completed in the measured seconds, after ``--warmup`` seconds of load. Exit
status 0: every bound held; 1: one did not; 2: the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from bench_front import DEFAULT_APP, LUA, cpu_by_role, wrk
from openai_peer_common import (
    REPO,
    BenchError,
    Server,
    checkout,
    log,
    ours,
    run_in_scratch,
    wait_gateway_ready,
)

BUSY = REPO / "bench" / "deadline_app" / "busy.py"
NOOP = DEFAULT_APP / "endpoints" / "noop.py"
SCENARIOS = ("noisy", "shares", "weights", "windows", "cost")
MODES = ("on", "off")
BODY = {"SIGNATURE": "busy"}
# Every load scenario's tenants, in one setting: one pair of gateways serves them all (a
# tenant new to the queue starts at its class's virtual time, so none carries credit).
TENANTS: dict[str, dict[str, Any]] = {
    "inter": {"PRIORITY": "interactive"}, "flood": {"PRIORITY": "batch"},
    "heavy": {"WEIGHT": 3}, "light": {"WEIGHT": 1},
    "w3": {"WEIGHT": 3}, "w2": {"WEIGHT": 2}, "w1": {"WEIGHT": 1}}
SHARES_LOAD = {"t48": 48, "t8": 8, "t4a": 4, "t4b": 4}
WEIGHTS_LOAD = {"heavy": 8, "light": 8}
# Concurrency unlike the weights: without the queue, shares follow concurrency.
WINDOWS_LOAD = {"w3": 8, "w2": 16, "w1": 4}
FLOOD_CONC = 64
INTERACTIVE_RATE = 5.0
WINDOW_S, WINDOW_STEP_S = 10.0, 1.0
# Between conditions: the requests a closed flood left in the workers' queues finish.
SETTLE_S = 2.0
BOUNDS = {"noisy": 2.0, "shares": 0.10, "weights": 0.10, "windows": 0.05, "cost": 1.03}
FULL = {"rounds": 3, "seconds": 20.0, "warmup": 2.0, "interactive": 1000, "cost_rounds": 11,
        "cost_seconds": 4}
QUICK = {"rounds": 1, "seconds": 3.0, "warmup": 1.0, "interactive": 15, "cost_rounds": 1,
         "cost_seconds": 1}
FLOOD_LUA = """wrk.method = "POST"
wrk.body = '{"SIGNATURE":"busy"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Customer-ID"] = "flood"
"""


def start_pair(workdir: Path, endpoint: Path, section: dict[str, Any],
               extra: dict[str, Any], order: tuple[str, ...] = MODES) -> dict[str, Server]:
    """An ``on`` and an ``off`` gateway serving ``endpoint`` alone, READY (started in
    ``order``)."""
    name = endpoint.stem
    pair = {mode: ours(workdir / f"{name}-{mode}", {
        "GATEWAY_WORKERS": 2, "ACCESS_LOG": False, "FAIR_QUEUEING": mode == "on", **extra,
        "CONFIG_ENDPOINTS": {name: section}}, [endpoint], label=f"{name}-{mode}")
        for mode in order}
    for server in pair.values():
        wait_gateway_ready(server, [name], 180)
    return pair


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


# -- load ------------------------------------------------------------------------------
async def closed_loop(url: str, load: dict[str, int], warmup: float,
                      seconds: float) -> tuple[list[tuple[str, float]], int]:
    """Each tenant keeps ``load[tenant]`` requests in flight for ``warmup + seconds``;
    (tenant, completion time from the measured start) of each answer 200 completed in the
    measured seconds, and how many answers were not 200."""
    done: list[tuple[str, float]] = []
    failed = 0
    began = time.perf_counter()
    end = began + warmup + seconds

    async def client(http: httpx.AsyncClient, tenant: str) -> None:
        nonlocal failed
        while time.perf_counter() < end:
            try:
                resp = await http.post(url, json=BODY, headers={"X-Customer-ID": tenant})
            except httpx.HTTPError:
                failed += 1
                continue
            at = time.perf_counter() - began - warmup
            if resp.status_code != 200:
                failed += 1
            elif 0.0 <= at <= seconds:
                done.append((tenant, at))

    # A connection pool per tenant: in one pool shared by all, a busy machine left some
    # tenants' requests waiting in the pool for seconds while others' went (seen with
    # four CPU hogs: the front received 148 requests of t48 and 16 of t4b in 4 s, none
    # waiting in the fair queue), which measured the client, not the gateway.
    async with contextlib.AsyncExitStack() as stack:
        pools = {t: await stack.enter_async_context(httpx.AsyncClient(
            timeout=120, limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)))
            for t, n in load.items()}
        await asyncio.gather(*(client(pools[t], t) for t, n in load.items() for _ in range(n)))
    return done, failed


async def open_loop(url: str, rate: float, count: int) -> tuple[list[float], int]:
    """``count`` requests of tenant ``inter``, ``rate`` a second, each at its time
    whatever the answers do: the latencies (ms) of the answers 200, and the others."""
    latencies: list[float] = []
    failed = 0

    async def one(http: httpx.AsyncClient, at: float) -> None:
        nonlocal failed
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        sent = time.perf_counter()
        try:
            resp = await http.post(url, json=BODY, headers={"X-Customer-ID": "inter"})
        except httpx.HTTPError:
            failed += 1
            return
        if resp.status_code == 200:
            latencies.append((time.perf_counter() - sent) * 1000)
        else:
            failed += 1

    async with httpx.AsyncClient(timeout=120) as http:
        # One connection opened before the clock starts: the first request's is not timed.
        await http.get(url.replace("/run", "/health/live"))
        t0 = time.perf_counter() + 0.1
        await asyncio.gather(*(one(http, t0 + i / rate) for i in range(count)))
    return latencies, failed


class Flood:
    """Tenant ``flood``'s requests, ``FLOOD_CONC`` in flight (wrk), until :meth:`stop`."""

    def __init__(self, server: Server, lua: Path) -> None:
        self.proc = subprocess.Popen(
            ["wrk", "-t1", f"-c{FLOOD_CONC}", "-d3600s", "--timeout", "60s", "-s", str(lua),
             f"{server.base}/run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> dict[str, float]:
        """Stop wrk (SIGINT: it prints its summary); its answers a second."""
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.communicate(timeout=60)[0]
        found = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
        if found is None:
            raise BenchError(f"wrk's flood printed no summary: {out[-500:]}")
        seconds = float(found.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[found.group(3)]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {"flood_per_s": int(found.group(1)) / seconds,
                "flood_non_2xx": int(bad.group(1)) if bad else 0}


# -- scenarios -------------------------------------------------------------------------
def noisy(pair: dict[str, Server], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Interactive latency: alone, beside a batch flood with the queue on, and off."""
    lua = workdir / "flood.lua"
    lua.write_text(FLOOD_LUA)
    per_round = math.ceil(args.interactive / args.rounds)
    conditions = ("idle", "on", "off")
    lat: dict[str, list[float]] = {c: [] for c in conditions}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        row: dict[str, Any] = {}
        for cond in conditions if r % 2 == 0 else conditions[::-1]:
            server = pair["on" if cond == "idle" else cond]
            flood = None
            if cond != "idle":
                flood = Flood(server, lua)
                time.sleep(args.warmup)  # its requests fill the queue
            got, failed = asyncio.run(open_loop(f"{server.base}/run", INTERACTIVE_RATE, per_round))
            row[cond] = {"n": len(got), "failed": failed, "p50_ms": percentile(got, 0.5),
                         "p99_ms": percentile(got, 0.99), **(flood.stop() if flood else {})}
            lat[cond] += got
            server.check_alive()
            time.sleep(SETTLE_S)
        rounds.append(row)
        log(f"noisy round {r + 1}: " + ", ".join(
            f"{c} p99 {row[c]['p99_ms']:.1f} ms" for c in conditions))
    out: dict[str, Any] = {"rounds": rounds}
    for cond in conditions:
        out[cond] = {"n": len(lat[cond]), "failed": sum(r[cond]["failed"] for r in rounds),
                     "p50_ms": percentile(lat[cond], 0.5), "p99_ms": percentile(lat[cond], 0.99),
                     "max_ms": max(lat[cond], default=math.nan)}
        if cond != "idle":
            out[cond]["flood_per_s"] = statistics.median(r[cond]["flood_per_s"] for r in rounds)
            out[cond]["flood_non_2xx"] = sum(r[cond]["flood_non_2xx"] for r in rounds)
    idle = out["idle"]["p99_ms"]
    out["p99_over_idle"] = {m: out[m]["p99_ms"] / idle for m in MODES}
    out["ok"] = out["p99_over_idle"]["on"] <= BOUNDS["noisy"]
    return out


def window_deviations(done: list[tuple[str, float]], target: dict[str, float], seconds: float,
                      window: float) -> tuple[dict[str, float], int]:
    """Each tenant's worst relative deviation from its ``target`` share over the windows
    of ``window`` seconds (sliding by :data:`WINDOW_STEP_S`) in ``seconds``; the count of
    windows."""
    worst = dict.fromkeys(target, 0.0)
    starts = [i * WINDOW_STEP_S for i in range(int((seconds - window) / WINDOW_STEP_S) + 1)]
    for start in starts:
        counts = Counter(t for t, at in done if start <= at < start + window)
        total = sum(counts.values())
        for tenant, share in target.items():
            got = counts[tenant] / total if total else 0.0
            worst[tenant] = max(worst[tenant], abs(got / share - 1))
    return worst, len(starts)


def closed(pair: dict[str, Server], args: argparse.Namespace, name: str, load: dict[str, int]
           ) -> tuple[dict[str, Any], dict[str, list[list[tuple[str, float]]]]]:
    """Rounds of closed-loop tenants on each gateway: answers per tenant per round, and
    per gateway each round's (tenant, completion time) list (not reported: too long)."""
    rounds: list[dict[str, Any]] = []
    answers: dict[str, list[list[tuple[str, float]]]] = {m: [] for m in MODES}
    for r in range(args.rounds):
        row: dict[str, Any] = {}
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            done, failed = asyncio.run(closed_loop(f"{pair[mode].base}/run", load, args.warmup,
                                                   args.seconds))
            pair[mode].check_alive()
            row[mode] = {"failed": failed, "served": dict(Counter(t for t, _ in done))}
            answers[mode].append(done)
            time.sleep(SETTLE_S)
        rounds.append(row)
        log(f"{name} round {r + 1}: " + "; ".join(f"{m} {row[m]['served']}" for m in MODES))
    return {"rounds": rounds}, answers


def pooled(result: dict[str, Any], mode: str, load: dict[str, int]) -> dict[str, Any]:
    """Answers per tenant over every round of ``mode``, with their shares."""
    served = {t: sum(r[mode]["served"].get(t, 0) for r in result["rounds"]) for t in load}
    total = max(1, sum(served.values()))
    return {"served": served, "share": {t: n / total for t, n in served.items()},
            "failed": sum(r[mode]["failed"] for r in result["rounds"])}


def shares(pair: dict[str, Server], args: argparse.Namespace) -> dict[str, Any]:
    """Equal weights at unequal concurrency: how near to equal the served shares are."""
    out, _ = closed(pair, args, "shares", SHARES_LOAD)
    equal = 1 / len(SHARES_LOAD)
    for mode in MODES:
        out[mode] = pooled(out, mode, SHARES_LOAD)
        out[mode]["worst_deviation"] = max(abs(s / equal - 1) for s in out[mode]["share"].values())
    out["ok"] = out["on"]["worst_deviation"] <= BOUNDS["shares"]
    return out


def weights(pair: dict[str, Server], args: argparse.Namespace) -> dict[str, Any]:
    """Weights 3:1 at equal concurrency: the served ratio."""
    out, _ = closed(pair, args, "weights", WEIGHTS_LOAD)
    for mode in MODES:
        out[mode] = pooled(out, mode, WEIGHTS_LOAD)
        served = out[mode]["served"]
        out[mode]["ratio"] = served["heavy"] / max(1, served["light"])
        out[mode]["round_ratios"] = [r[mode]["served"].get("heavy", 0)
                                     / max(1, r[mode]["served"].get("light", 0))
                                     for r in out["rounds"]]
    target = TENANTS["heavy"]["WEIGHT"] / TENANTS["light"]["WEIGHT"]
    out["ok"] = abs(out["on"]["ratio"] / target - 1) <= BOUNDS["weights"]
    return out


def windows(pair: dict[str, Server], args: argparse.Namespace) -> dict[str, Any]:
    """Weighted shares over every 10 s window of two front processes' answers."""
    out, answers = closed(pair, args, "windows", WINDOWS_LOAD)
    total_weight = sum(TENANTS[t]["WEIGHT"] for t in WINDOWS_LOAD)
    target = {t: TENANTS[t]["WEIGHT"] / total_weight for t in WINDOWS_LOAD}
    window = min(WINDOW_S, args.seconds)
    out.update(window_s=window, target=target)
    for mode in MODES:
        out[mode] = pooled(out, mode, WINDOWS_LOAD)
        worst, count = dict.fromkeys(target, 0.0), 0
        for done in answers[mode]:
            found, n = window_deviations(done, target, args.seconds, window)
            worst = {t: max(worst[t], found[t]) for t in target}
            count += n
        out[mode].update(windows=count, worst_deviation=worst,
                         worst=max(worst.values()))
    out["ok"] = out["on"]["worst"] <= BOUNDS["windows"]
    return out


def bursts(pair: dict[str, Server], conc: int, seconds: int, lua: Path,
           order: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each gateway under wrk for a second unmeasured, then ``seconds`` measured seconds
    each, one second at a time in turn (``order``, then reversed, and so on): per
    gateway, its figures and the CPU ms per request of its whole tree, and of its front
    and server workers, over its seconds. Seconds apart, the two see the same machine: it
    drifts over tens of seconds by more than the cost measured."""
    for mode in order:
        wrk(pair[mode].port, conc, 1, str(lua))
    requests: dict[str, float] = dict.fromkeys(order, 0.0)
    errors: dict[str, float] = dict.fromkeys(order, 0.0)
    p50s: dict[str, list[float]] = {mode: [] for mode in order}
    cpu: dict[str, dict[str, float]] = {mode: {} for mode in order}
    for second in range(seconds):
        for mode in order if second % 2 == 0 else order[::-1]:
            pid = pair[mode].proc.pid  # type: ignore[union-attr]
            before = cpu_by_role(pid)
            result = wrk(pair[mode].port, conc, 1, str(lua))
            after = cpu_by_role(pid)
            for role, spent in after.items():
                cpu[mode][role] = cpu[mode].get(role, 0.0) + spent - before.get(role, 0.0)
            requests[mode] += result["requests"]
            errors[mode] += result["errors"]
            p50s[mode].append(result["p50_ms"])
    out = {}
    for mode in order:
        per = {k: v * 1000 / max(1, requests[mode]) for k, v in cpu[mode].items()}
        out[mode] = {"rps": requests[mode] / seconds, "p50_ms": statistics.median(p50s[mode]),
                     "non_2xx": errors[mode], "cpu_ms": sum(per.values()),
                     "front_ms": per.get("front worker", 0.0),
                     "server_ms": per.get("server worker", 0.0)}
    return out


def cost(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """CPU per noop request of the whole gateway tree, queue on against off, at each
    concurrency of ``--conc``."""
    if not NOOP.exists():
        raise BenchError(f"no peer harness noop endpoint at {NOOP}")
    slots = {"FAIR_SLOTS": args.cost_fair_slots} if args.cost_fair_slots else {}
    lua = workdir / "noop.lua"
    lua.write_text(LUA % "noop")
    rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in args.conc}
    leftovers: list[str] = []
    for r in range(args.cost_rounds):
        # A new pair each round: two gateways of one checkout and settings differ in CPU
        # a request by up to 10 % for as long as they run (four alike, 12 rounds: 88.9
        # to 105.6 us in their fronts), so one pair's ratio would carry its two
        # instances' difference into every round; new pairs make it noise the median
        # of the rounds takes out.
        order = MODES if r % 2 == 0 else MODES[::-1]
        pair = start_pair(workdir / f"cost-{r}", NOOP,
                          {"NR_WORKERS": 2, "HOST": "127.0.0.1", **slots}, {}, order)
        try:
            for conc in args.conc:
                row: dict[str, Any] = bursts(pair, conc, args.cost_seconds, lua, order)
                row["ratio"] = row["on"]["cpu_ms"] / row["off"]["cpu_ms"]
                rounds[conc].append(row)
                log(f"cost round {r + 1} c={conc}: CPU on {row['on']['cpu_ms']:.4f}, off "
                    f"{row['off']['cpu_ms']:.4f} ms/req, ratio {row['ratio']:.3f}")
        finally:
            leftovers += [p for server in pair.values() for p in server.stop()]
    out: dict[str, Any] = {"leftover_processes": leftovers}
    for conc, rows in rounds.items():
        at: dict[str, Any] = {"rounds": rows}
        for mode in MODES:
            at[mode] = {k: statistics.median(r[mode][k] for r in rows)
                        for k in ("rps", "p50_ms", "cpu_ms", "front_ms", "server_ms")}
            at[mode]["non_2xx"] = sum(r[mode]["non_2xx"] for r in rows)
        at["paired_ratio"] = statistics.median(r["ratio"] for r in rows)
        out[f"c{conc}"] = at
    out["ok"] = all(out[f"c{c}"]["paired_ratio"] <= BOUNDS["cost"] for c in args.conc)
    return out


# -- report ----------------------------------------------------------------------------
def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def report(results: dict[str, Any]) -> None:
    """The table of figures and a verdict per criterion, on stdout."""
    rows: list[tuple[str, str, str, str, str, bool]] = []
    if "noisy" in results:
        n = results["noisy"]
        print(f"noisy: inter at {INTERACTIVE_RATE:g}/s beside flood at {FLOOD_CONC} in flight")
        for cond in ("idle", "on", "off"):
            c = n[cond]
            flood = (f"  flood {c['flood_per_s']:.1f}/s (non-2xx {c['flood_non_2xx']})"
                     if cond != "idle" else "")
            print(f"  {cond:>4}: {c['n']} answers (failed {c['failed']})  p50 {c['p50_ms']:.1f} ms"
                  f"  p99 {c['p99_ms']:.1f} ms  max {c['max_ms']:.1f} ms{flood}")
        rows.append(("noisy", f"inter p99 / idle p99 ({n['idle']['p99_ms']:.1f} ms)",
                     f"{n['p99_over_idle']['on']:.2f}x", f"{n['p99_over_idle']['off']:.2f}x",
                     f"<= {BOUNDS['noisy']:g}x", n["ok"]))
    for name, load in (("shares", SHARES_LOAD), ("weights", WEIGHTS_LOAD),
                       ("windows", WINDOWS_LOAD)):
        if name not in results:
            continue
        s = results[name]
        print(f"{name}: in flight {load}")
        for mode in MODES:
            shares_ = ", ".join(f"{t} {s[mode]['served'][t]} ({pct(v)})"
                                for t, v in s[mode]["share"].items())
            print(f"  {mode:>4}: {shares_}  (failed {s[mode]['failed']})")
    if "shares" in results:
        s = results["shares"]
        rows.append(("shares", "worst share / equal - 1 (48/8/4/4)",
                     pct(s["on"]["worst_deviation"]), pct(s["off"]["worst_deviation"]),
                     f"<= {pct(BOUNDS['shares'])}", s["ok"]))
    if "weights" in results:
        w = results["weights"]
        rows.append(("weights", "served heavy / light (weights 3:1)", f"{w['on']['ratio']:.2f}",
                     f"{w['off']['ratio']:.2f}", f"3 +- {pct(BOUNDS['weights'])}", w["ok"]))
    if "windows" in results:
        w = results["windows"]
        for mode in MODES:
            worst = ", ".join(f"{t} {pct(v)}" for t, v in w[mode]["worst_deviation"].items())
            print(f"  {mode:>4}: worst deviation over {w[mode]['windows']} windows of "
                  f"{w['window_s']:g} s: {worst}")
        rows.append(("windows", f"worst {w['window_s']:g} s window share / weight share - 1",
                     pct(w["on"]["worst"]), pct(w["off"]["worst"]),
                     f"<= {pct(BOUNDS['windows'])}", w["ok"]))
    if "cost" in results:
        print(f"cost: noop, medians of {results['args']['cost_rounds']} rounds")
        for conc in results["args"]["conc"]:
            c = results["cost"][f"c{conc}"]
            for mode in MODES:
                m = c[mode]
                print(f"  c={conc:<3} {mode:>3}: {m['rps']:6.0f} req/s  p50 {m['p50_ms']:.3f} ms  "
                      f"CPU {m['cpu_ms']:.4f} ms/req (front workers {m['front_ms']:.4f}, "
                      f"server workers {m['server_ms']:.4f})  non-2xx {m['non_2xx']}")
            rows.append(("cost", f"CPU ms/req on / off c={conc}, median paired",
                         f"{c['paired_ratio']:.3f}", "1", f"<= {BOUNDS['cost']:g}",
                         c["paired_ratio"] <= BOUNDS["cost"]))
    print(f"\n{'scenario':<8}  {'criterion':<46}  {'on':>8}  {'off':>8}  {'bound':>10}  verdict")
    for name, what, on, off, bound, ok in rows:
        print(f"{name:<8}  {what:<46}  {on:>8}  {off:>8}  {bound:>10}  {'pass' if ok else 'FAIL'}")


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every scenario asked for; their figures."""
    results: dict[str, Any] = {"date": datetime.date.today().isoformat(), "checkout": checkout(),
                               "args": {k: str(v) if isinstance(v, Path) else v
                                        for k, v in vars(args).items()}}
    load = [s for s in args.scenarios if s != "cost"]
    leftovers: list[str] = []
    if load:
        # MAX_IN_FLIGHT's default (workers x 32 = 64) would refuse inter's requests (503)
        # beside a flood of 64, before the queue could order them.
        pair = start_pair(workdir, BUSY, {"NR_WORKERS": 2, "TIMEOUT": 120, "MAX_IN_FLIGHT": 256},
                          {"TENANTS": TENANTS})
        try:
            for name in load:
                if name == "noisy":
                    results[name] = noisy(pair, args, workdir)
                else:
                    results[name] = {"shares": shares, "weights": weights,
                                     "windows": windows}[name](pair, args)
        finally:
            leftovers = [p for server in pair.values() for p in server.stop()]
    if "cost" in args.scenarios:
        results["cost"] = cost(args, workdir)
        leftovers += results["cost"]["leftover_processes"]
    results["leftover_processes"] = leftovers
    results["ok"] = all(results[s]["ok"] for s in args.scenarios) and not leftovers
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--rounds", type=int, help=f"rounds of the load scenarios ({FULL['rounds']})")
    p.add_argument("--seconds", type=float,
                   help=f"measured seconds of a closed-loop round per gateway ({FULL['seconds']:g})")
    p.add_argument("--warmup", type=float,
                   help=f"seconds of load before the measured ones ({FULL['warmup']:g})")
    p.add_argument("--interactive", type=int,
                   help=f"noisy: interactive requests per condition ({FULL['interactive']})")
    p.add_argument("--cost-rounds", type=int, help=f"cost: rounds ({FULL['cost_rounds']})")
    p.add_argument("--cost-seconds", type=int,
                   help=f"cost: measured seconds per gateway and round ({FULL['cost_seconds']})")
    p.add_argument("--conc", default="1,16", help="cost: wrk connections, each judged (1,16)")
    p.add_argument("--cost-fair-slots", type=int,
                   help="cost: the endpoint's FAIR_SLOTS (default: its own, 1)")
    p.add_argument("--quick", action="store_true", help=f"a short pass for tests: {QUICK}")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scenarios = args.scenarios.split(",")
    args.conc = [int(c) for c in args.conc.split(",")]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}; known: {','.join(SCENARIOS)}")
    results = run_in_scratch("bench_fairness", run, args)
    if results is None:
        return 2
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
