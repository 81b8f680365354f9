#!/usr/bin/env python
"""Deadlines at 2x overload: goodput with X-Request-Deadline enforced against the same
gateway with the deadline not sent, and whether any request started after its deadline.

    python bench/bench_deadlines.py [--rounds 5] [--seconds 10] [--deadline-ms 200] [--json PATH]

One gateway of this checkout serves ``busy`` (bench/deadline_app/busy.py: 20 ms of CPU a
request, ``NR_WORKERS`` 2, as the peer harness's ``cpu``). First its capacity is
measured: 8 clients in a closed loop for 5 s. Then each round offers twice that rate
for ``--seconds``, open loop (each request sent at its scheduled time, whatever the
answers do), twice: once with ``X-Request-Deadline`` on every request ("enforced") and
once without ("not enforced"), the order alternating between rounds. Each mode waits
for every answer before the next starts. Both modes run 3 s unmeasured first (the
client opens its connections).

Per mode and round: goodput, the answers 200 within the deadline (from the request's
send to its last byte) per second of the offered period; late starts, the answers whose
``_predict`` began after the deadline as the endpoint server counts it (from its own
receipt of what the gateway passed on: the server-side count); and, for the record,
the answers whose ``_predict`` began more than the deadline after the client's send
(the client's clock, which also counts its own delays and the gateway's reading of a
backlog). Judged: the median of the per-round goodput ratios (enforced / not) is at
least 1.5, and no enforced request started ``_predict`` after its deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from openai_peer_common import REPO, BenchError, log, ours, run_in_scratch, wait_gateway_ready

APP = REPO / "bench" / "deadline_app" / "busy.py"


async def closed_loop(url: str, clients: int, seconds: float) -> float:
    """Answers a second with ``clients`` sending one request after another."""
    done = 0
    end = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < end:
            resp = await http.post(url, json={"SIGNATURE": "busy", "SENT": time.time()})
            if resp.status_code != 200:
                raise BenchError(f"capacity run: {resp.status_code} {resp.text[:200]}")
            done += 1

    async with httpx.AsyncClient(timeout=60) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return done / (time.perf_counter() - began)


async def open_loop(url: str, rate: float, seconds: float,
                    deadline_ms: int | None) -> dict[str, Any]:
    """``rate`` requests a second for ``seconds``, each at its time; their outcomes."""
    headers = {"X-Request-Deadline": str(deadline_ms)} if deadline_ms else {}
    limit = (deadline_ms or 200) / 1000
    outcomes: list[tuple[int, float, float | None, float, bool]] = []

    async def one(http: httpx.AsyncClient, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        sent_wall, sent = time.time(), time.perf_counter()
        try:
            resp = await http.post(url, json={"SIGNATURE": "busy", "SENT": sent_wall},
                                   headers=headers)
            status = resp.status_code
            answer = resp.json() if status == 200 else {}
        except httpx.HTTPError:
            status, answer = 0, {}
        outcomes.append((status, time.perf_counter() - sent, answer.get("started"), sent_wall,
                         bool(answer.get("late"))))

    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        t0 = time.perf_counter() + 0.2
        n = int(rate * seconds)
        await asyncio.gather(*(one(http, t0 + i / rate) for i in range(n)))
    good = sum(1 for s, lat, *_ in outcomes if s == 200 and lat <= limit)
    by_client = [st - sw - limit for s, _, st, sw, _ in outcomes if s == 200 and st is not None
                 and st - sw > limit]
    statuses: dict[str, int] = {}
    for s, *_ in outcomes:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {"sent": len(outcomes), "statuses": statuses, "goodput_per_s": good / seconds,
            "late_starts": sum(1 for *_, late in outcomes if late),
            "late_by_client_clock": len(by_client),
            "worst_late_by_client_ms": round(1000 * max(by_client), 2) if by_client else 0.0}


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    gw = ours(workdir, {"GATEWAY_WORKERS": 1, "ACCESS_LOG": False, "CONFIG_ENDPOINTS": {
        "busy": {"NR_WORKERS": 2, "TIMEOUT": 120}}}, [APP])
    results: dict[str, Any] = {"rounds": [], "deadline_ms": args.deadline_ms,
                               "seconds": args.seconds}
    try:
        wait_gateway_ready(gw, ["busy"], 120)
        url = f"{gw.base}/run"
        capacity = asyncio.run(closed_loop(url, 8, 5.0))
        rate = 2 * capacity
        results.update(capacity_per_s=round(capacity, 1), offered_per_s=round(rate, 1))
        log(f"capacity {capacity:.1f}/s; offering {rate:.1f}/s")
        for deadline in (args.deadline_ms, None):  # warm up: the client's connections
            asyncio.run(open_loop(url, rate, 3.0, deadline))
        for r in range(args.rounds):
            order = ("enforced", "not_enforced") if r % 2 == 0 else ("not_enforced", "enforced")
            row: dict[str, Any] = {}
            for mode in order:
                row[mode] = asyncio.run(open_loop(
                    url, rate, args.seconds,
                    args.deadline_ms if mode == "enforced" else None))
                gw.check_alive()
            row["ratio"] = (row["enforced"]["goodput_per_s"]
                            / max(row["not_enforced"]["goodput_per_s"], 1e-9))
            results["rounds"].append(row)
            log(f"round {r + 1}: goodput enforced {row['enforced']['goodput_per_s']:.1f}/s, "
                f"not {row['not_enforced']['goodput_per_s']:.1f}/s; late starts "
                f"{row['enforced']['late_starts']} (by the client's clock: "
                f"{row['enforced']['late_by_client_clock']})")
    finally:
        results["leftover_processes"] = gw.stop()
    rounds = results["rounds"]
    results["goodput_ratio_median"] = statistics.median(r["ratio"] for r in rounds)
    results["late_starts"] = sum(r["enforced"]["late_starts"] for r in rounds)
    results["late_by_client_clock"] = sum(r["enforced"]["late_by_client_clock"] for r in rounds)
    results["ok"] = (results["goodput_ratio_median"] >= 1.5 and results["late_starts"] == 0
                     and not results["leftover_processes"])
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="offered period of a mode (10)")
    p.add_argument("--deadline-ms", type=int, default=200)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results = run_in_scratch("bench_deadlines", run, args)
    if results is None:
        return 2
    summary = {k: v for k, v in results.items() if k != "rounds"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
