#!/usr/bin/env python
"""What the gateway's hop costs: one endpoint through the front and called directly.

    python bench/bench_hop.py [--checkout .] [--rounds 7] [--duration 5] [--conc 16] \\
        [--endpoint noop] [--json out.json] [--profile DIR]

It starts ``run_gateway.py`` of one checkout on the peer harness's ``noop`` endpoint
(as :mod:`bench_front` does: 2 server workers, the front's default worker count, access
log off) with ``TCP_PORT`` on, so that its endpoint server also listens on a TCP port of
its own. Then rounds alternate, with the same wrk and the same body: ``POST /run`` to
the gateway, and ``POST /run`` straight to the endpoint server (odd rounds in that
order, even rounds reversed). Each round prints req/s, p50 and the CPU per request of
the front and the server processes; the summary is the median of each round's own
ratio gateway / direct (req/s), and the medians of the CPU per request. Only ratios
within one run mean anything: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_front import (
    DEFAULT_APP,
    LUA,
    REPO,
    cpu_by_role,
    free_port,
    profile,
    start,
    stop,
    top_frames,
    wait_ready,
    workers_of,
    wrk,
)

PATHS = ("gateway", "direct")


def load(port: int, args: argparse.Namespace, lua: str, manager: int,
         spy_to: Path | None) -> dict[str, Any]:
    """One measured load of ``port``: wrk's figures and the CPU per request by role."""
    spies = []
    if spy_to is not None:
        spy_to.mkdir(parents=True, exist_ok=True)
        for kind in ("front", "server"):
            for pid in workers_of(manager, kind):
                out = spy_to / f"{kind}-{pid}.txt"
                spies.append((kind, out, profile(pid, args.duration - 1, out)))
    before = cpu_by_role(manager)
    result: dict[str, Any] = wrk(port, args.conc, args.duration, lua)
    after = cpu_by_role(manager)
    for _kind, _out, spy in spies:
        spy.wait()
    n = max(1, result["requests"])
    result["cpu_ms"] = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1000 / n for k in after}
    result["cpu_ms_total"] = sum(result["cpu_ms"].values())
    for kind in ("front", "server"):
        files = [out for k, out, _spy in spies if k == kind and out.exists()]
        for out in files:
            print(f"    py-spy {out.name}: share of GIL-holding samples per innermost frame")
            for frame, share in top_frames(out):
                print(f"      {share:6.1%}  {frame}")
    return result


def line(name: str, r: dict[str, Any]) -> str:
    roles = "  ".join(f"{k} {v:.4f}" for k, v in sorted(r["cpu_ms"].items()) if v > 0.0005)
    return (f"  {name:>8} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.3f} ms  "
            f"CPU {r['cpu_ms_total']:.4f} ms/req  {roles}  errors {r['errors']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--app", type=Path, default=DEFAULT_APP)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--conc", type=int, default=16)
    parser.add_argument("--endpoint", default="noop")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="folder: py-spy every front and server worker in the first "
                             "round (py-spy on PATH)")
    args = parser.parse_args()
    gateway_port, server_port = free_port(), free_port()
    ports = {"gateway": gateway_port, "direct": server_port}
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PATHS}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % args.endpoint)
        lua = fh.name
    with tempfile.TemporaryDirectory() as cache:
        proc = start(args.checkout.resolve(), args.app, args.python, gateway_port, cache,
                     args.endpoint, {"TCP_PORT": True, "PORT": server_port})
        try:
            wait_ready(gateway_port, args.endpoint)
            wait_ready(server_port, args.endpoint)
            for path in PATHS:
                wrk(ports[path], args.conc, args.warmup, lua)
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}", flush=True)
                for path in PATHS if rnd % 2 == 0 else PATHS[::-1]:
                    spy_to = args.profile / path if args.profile and rnd == 0 else None
                    result = load(ports[path], args, lua, proc.pid, spy_to)
                    runs[path].append(result)
                    print(line(path, result), flush=True)
                time.sleep(0.5)
        finally:
            stop(proc)
            os.unlink(lua)
    summary = summarize(runs)
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0 if not any(r["errors"] for rs in runs.values() for r in rs) else 1


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Print and return the medians per path and the median of the per-round ratios."""
    print("\nmedians over rounds")
    summary: dict[str, Any] = {}
    for path, results in runs.items():
        roles = sorted({k for r in results for k in r["cpu_ms"]})
        med = {"rps": statistics.median(r["rps"] for r in results),
               "p50_ms": statistics.median(r["p50_ms"] for r in results),
               "cpu_ms_total": statistics.median(r["cpu_ms_total"] for r in results),
               "cpu_ms": {k: statistics.median(r["cpu_ms"].get(k, 0.0) for r in results)
                          for k in roles},
               "errors": sum(r["errors"] for r in results)}
        summary[path] = med
        print(line(path, med))
    ratios = [g["rps"] / d["rps"] for g, d in zip(runs["gateway"], runs["direct"], strict=True)]
    cpu = [g["cpu_ms_total"] / d["cpu_ms_total"]
           for g, d in zip(runs["gateway"], runs["direct"], strict=True)]
    summary["ratio_rps"] = statistics.median(ratios)
    summary["ratio_cpu"] = statistics.median(cpu)
    print(f"\ngateway / direct req/s, median of paired rounds: {summary['ratio_rps']:.3f}  "
          f"(rounds: {' '.join(f'{r:.3f}' for r in ratios)})")
    print(f"gateway / direct CPU per request, whole tree:      {summary['ratio_cpu']:.3f}  "
          f"(rounds: {' '.join(f'{r:.3f}' for r in cpu)})")
    return summary


if __name__ == "__main__":
    sys.exit(main())
